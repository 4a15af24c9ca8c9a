"""The controls and the window shared by `sandbox/play.py` (the true sandbox) and
`live_inference.py` (the learned world).

One `KeyMap` reads pygame events and turns the held keys plus the mouse motion since the last
frame into one frame's action, in both forms of actions.py:
- a raw tick [9] (RAW_NAMES: camera in degrees, keys 0/1), what the sandbox steps on;
- a normalized step action [7] (ACTION_NAMES) for a model whose one step spans `stride` ticks.

Held keys are tracked from KEYDOWN/KEYUP events rather than pygame.key.get_pressed(), so posted
events (tests, the dummy SDL driver) drive it exactly like a real keyboard, and a key tapped and
released between two frames still counts for that frame (jump is "max over the window").

`Window` shows native-resolution frames scaled up with nearest-neighbour (no blur), a HUD bar
under the picture and the help overlay; it is here so the sandbox player needs no torch.
"""
import collections
import os
import time

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import numpy as np  # noqa: E402
import pygame  # noqa: E402  (after the env var that silences its banner)

from actions import RAW_DIM, RAW_NAMES, aggregate  # noqa: E402

R = {name: i for i, name in enumerate(RAW_NAMES)}

# key -> raw component that is 1 while the key is held
MOVE_KEYS = {
    pygame.K_w: "forward",
    pygame.K_s: "back",
    pygame.K_a: "left",
    pygame.K_d: "right",
    pygame.K_SPACE: "jump",
    pygame.K_LCTRL: "sprint",
    pygame.K_LSHIFT: "sneak",
}
# arrow key -> (yaw sign, pitch sign); positive yaw turns right, positive pitch looks down
ARROW_KEYS = {pygame.K_LEFT: (-1, 0), pygame.K_RIGHT: (1, 0), pygame.K_UP: (0, -1), pygame.K_DOWN: (0, 1)}

TOP_K_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)  # 0 = off; - and = walk this ladder

# (keys, what they do, which programs use them) -- printed at start and drawn by the H overlay
CONTROLS = [
    ("W A S D", "move forward / left / back / right", "both"),
    ("Space", "jump", "both"),
    ("Left Ctrl", "sprint", "both"),
    ("Left Shift", "sneak", "both"),
    ("Mouse", "look around (click the window to grab the mouse)", "both"),
    ("Arrow keys", "look around without the mouse", "both"),
    ("Esc", "release the mouse", "both"),
    ("R", "reset to the start", "both"),
    ("P", "pause / resume", "both"),
    ("H", "show / hide this help", "both"),
    ("[ ]", "temperature down / up", "model"),
    ("- =", "top-k down / up (0 = off)", "model"),
    ("; '", "top-p down / up", "model"),
    ("G", "greedy (argmax) on / off", "model"),
    ("Q or close", "quit", "both"),
]


def controls_lines(model: bool = True, sep: str | None = None) -> list[str]:
    """The controls table as text lines (model=False leaves out the sampling keys); with `sep`
    the key and its description are joined by it instead of padded to a column."""
    rows = [(k, what) for k, what, who in CONTROLS if model or who == "both"]
    width = max(len(k) for k, _ in rows)
    return [f"{k}{sep}{what}" if sep else f"  {k:<{width}}  {what}" for k, what in rows]


def controls_markdown(model: bool = True) -> str:
    rows = [(k, what) for k, what, who in CONTROLS if model or who == "both"]
    return "\n".join(["| key | action |", "|---|---|"] + [f"| {k} | {what} |" for k, what in rows])


def print_controls(model: bool = True):
    print("Controls:")
    print("\n".join(controls_lines(model)))


def step_from_raw(raw, stride: int) -> np.ndarray:
    """One frame's raw input [9] (camera = total degrees over the frame, keys held for the whole
    frame) -> the normalized step action [7] a model with `stride` ticks per step expects."""
    ticks = np.repeat(np.asarray(raw, dtype=np.float32)[None], stride, axis=0)
    ticks[:, R["yaw_deg"]] /= stride
    ticks[:, R["pitch_deg"]] /= stride
    return aggregate(ticks, stride)[0]


class KeyMap:
    """Turns pygame events into per-frame actions and a few commands.

    Per frame: feed every event to `handle(event)` (it returns a command name or None), then call
    `raw_tick()` / `step_action(stride)` once; both consume the mouse motion gathered since the
    previous frame. The sampling keys change `self.sampler` (a sampling.Sampler) in place.
    """

    def __init__(self, sensitivity: float = 0.15, arrow_speed: float = 5.0, sampler=None):
        self.sensitivity = sensitivity   # camera degrees per pixel of mouse motion (VPT uses 0.15)
        self.arrow_speed = arrow_speed   # camera degrees per tick while an arrow key is held
        self.sampler = sampler
        # what G restores when leaving greedy
        self.saved_temperature = sampler.temperature if sampler is not None and not sampler.greedy else 1.0
        self.held: set[int] = set()      # keys down now
        self.tapped: set[int] = set()    # keys that went down since the last frame
        self.mouse = np.zeros(2, dtype=np.float64)  # (dx, dy) pixels since the last frame
        self.grabbed = False
        self.paused = False
        self.show_help = False

    # ------------------------------------------------------------------ events
    def handle(self, event) -> str | None:
        """Update the input state from one event. Returns "quit", "reset", "pause", "help",
        "sampling", "grab", "release" when the event asks for that, else None."""
        t = event.type
        if t == pygame.QUIT:
            return "quit"
        if t == pygame.KEYDOWN:
            key = event.key
            self.held.add(key)
            self.tapped.add(key)
            if key == pygame.K_q:
                return "quit"
            if key == pygame.K_ESCAPE:
                self.set_grab(False)
                return "release"
            if key == pygame.K_r:
                return "reset"
            if key == pygame.K_p:
                self.paused = not self.paused
                return "pause"
            if key == pygame.K_h:
                self.show_help = not self.show_help
                return "help"
            if self.sampler is not None and self._change_sampling(key):
                return "sampling"
            return None
        if t == pygame.KEYUP:
            self.held.discard(event.key)
            return None
        if t == pygame.MOUSEMOTION:
            if self.grabbed:
                self.mouse += event.rel
            return None
        if t == pygame.MOUSEBUTTONDOWN:
            if not self.grabbed:
                self.set_grab(True)
                return "grab"
            return None
        if t == pygame.WINDOWFOCUSLOST:
            # keys released while the window is unfocused never send KEYUP: forget them
            self.held.clear()
            self.set_grab(False)
            return "release"
        return None

    def set_grab(self, grab: bool):
        """Grab the mouse (hidden, relative motion) or release it. Safe without a window."""
        self.grabbed = grab
        self.mouse[:] = 0
        if pygame.display.get_init() and pygame.display.get_surface() is not None:
            pygame.event.set_grab(grab)
            pygame.mouse.set_visible(not grab)

    def _change_sampling(self, key) -> bool:
        s = self.sampler
        if key == pygame.K_g:
            if s.greedy:
                s.temperature = self.saved_temperature
            else:
                self.saved_temperature, s.temperature = s.temperature, 0.0
        elif key in (pygame.K_LEFTBRACKET, pygame.K_RIGHTBRACKET):
            base = self.saved_temperature if s.greedy else s.temperature
            step = 0.1 if key == pygame.K_RIGHTBRACKET else -0.1
            s.temperature = float(np.clip(round(base + step, 2), 0.1, 3.0))
            self.saved_temperature = s.temperature
        elif key in (pygame.K_MINUS, pygame.K_EQUALS):
            # the nearest rung of the ladder above / below the current value
            if key == pygame.K_EQUALS:
                s.top_k = next((k for k in TOP_K_STEPS[1:] if k > s.top_k), 0) if s.top_k else 0
            else:
                s.top_k = next((k for k in reversed(TOP_K_STEPS[1:]) if k < s.top_k), 1) if s.top_k else TOP_K_STEPS[-1]
        elif key in (pygame.K_SEMICOLON, pygame.K_QUOTE):
            step = 0.05 if key == pygame.K_QUOTE else -0.05
            s.top_p = float(np.clip(round(s.top_p + step, 2), 0.05, 1.0))
        else:
            return False
        return True

    # ------------------------------------------------------------------ per-frame actions
    def _down(self, key, pressed) -> bool:
        if key in self.held or key in self.tapped:
            return True
        if pressed is None:
            return False
        try:
            return bool(pressed[key])
        except (KeyError, IndexError):
            return False

    def raw_tick(self, pressed=None, ticks: int = 1) -> np.ndarray:
        """This frame's input as one raw vector [9]: camera = degrees turned over the frame (mouse
        motion since the last call plus arrow keys held for `ticks` ticks), keys 0/1.

        `pressed` optionally adds a key state (pygame.key.get_pressed() or a {key: bool} dict)
        to the keys seen through events. Consumes the mouse motion and the taps.
        """
        raw = np.zeros(RAW_DIM, dtype=np.float32)
        for key, name in MOVE_KEYS.items():
            if self._down(key, pressed):
                raw[R[name]] = 1.0
        yaw, pitch = self.mouse * self.sensitivity
        for key, (sy, sp) in ARROW_KEYS.items():
            if self._down(key, pressed):
                yaw += sy * self.arrow_speed * ticks
                pitch += sp * self.arrow_speed * ticks
        raw[R["yaw_deg"]], raw[R["pitch_deg"]] = yaw, pitch
        self.mouse[:] = 0
        self.tapped.clear()
        return raw

    def step_action(self, stride: int = 1, pressed=None) -> tuple[np.ndarray, np.ndarray]:
        """This frame's (raw [9], normalized step action [7]) for a model taking `stride` ticks per step."""
        raw = self.raw_tick(pressed, ticks=stride)
        return raw, step_from_raw(raw, stride)



class RateMeter:
    """Frames per second over the last `n` frames (pygame's Clock.get_fps waits 10 frames)."""

    def __init__(self, n: int = 30):
        self.times = collections.deque(maxlen=n)

    def tick(self):
        self.times.append(time.perf_counter())

    @property
    def fps(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-9)


class Window:
    """A resizable pygame window: `panels` frames of (H, W) side by side, scaled up with
    nearest-neighbour to the largest size that fits, with a HUD bar of text lines below.

    The per-frame path allocates nothing big: each frame is wrapped (not copied) with
    pygame.image.frombuffer, blitted into one native-size surface, and scaled straight into a
    subsurface of the window.
    """

    def __init__(self, frame_size, panels: int = 1, scale: int = 6, title: str = "Ochre",
                 labels=None, hud_lines: int = 2, font_size: int = 20):
        self.H, self.W = frame_size
        self.panels = panels
        self.labels = labels or []
        pygame.display.init()
        pygame.font.init()
        self.font = pygame.font.Font(None, font_size)  # pygame's bundled font: no system fonts needed
        self.line_h = self.font.get_linesize()
        self.hud_h = hud_lines * self.line_h + 8
        size = (self.W * panels * scale, self.H * scale + self.hud_h)
        self.screen = pygame.display.set_mode(size, pygame.RESIZABLE)
        pygame.display.set_caption(title)
        self.native = pygame.Surface((self.W * panels, self.H)).convert()
        self._texts: dict[str, pygame.Surface] = {}
        self._size = None
        self._rect = None
        self._target = None

    def _layout(self):
        """Picture rectangle for the current window size (recomputed only when it changes)."""
        screen = pygame.display.get_surface()  # the window may have been resized
        size = screen.get_size()
        if size != self._size or screen is not self.screen:
            self.screen = screen
            ww, wh = size
            nw, nh = self.native.get_size()
            s = max(min(ww / nw, max(wh - self.hud_h, 1) / nh), 1e-3)
            w, h = max(int(nw * s), 1), max(int(nh * s), 1)
            self._rect = pygame.Rect((ww - w) // 2, max((wh - self.hud_h - h) // 2, 0), w, h)
            self._target = self.screen.subsurface(self._rect.clip(self.screen.get_rect()))
            self._size = size
        return self._rect

    def text(self, line: str, color=(235, 235, 235)) -> pygame.Surface:
        """Rendered text, cached: the HUD mostly repeats the same strings."""
        key = f"{color}{line}"
        surf = self._texts.get(key)
        if surf is None:
            if len(self._texts) > 256:
                self._texts.clear()
            surf = self._texts[key] = self.font.render(line, True, color)
        return surf

    def draw(self, frames, hud=(), overlay=None, flip: bool = True):
        """frames: list of `panels` uint8 [H, W, 3] arrays (C-contiguous); hud: text lines for the
        bar under the picture; overlay: text lines drawn over the picture (help, "paused")."""
        for i, frame in enumerate(frames):
            self.native.blit(pygame.image.frombuffer(frame, (self.W, self.H), "RGB"), (i * self.W, 0))
        rect = self._layout()
        self.screen.fill((0, 0, 0))
        pygame.transform.scale(self.native, self._target.get_size(), self._target)
        panel_w = rect.width / self.panels
        for i, label in enumerate(self.labels):
            self._boxed([label], (rect.x + int(i * panel_w) + 4, rect.y + 4))
        y = rect.bottom + 4
        for line in hud:
            self.screen.blit(self.text(line), (8, y))
            y += self.line_h
        if overlay:
            box = self._boxed(overlay, None, alpha=200)
            self.screen.blit(box, (rect.centerx - box.get_width() // 2, rect.centery - box.get_height() // 2))
        if flip:
            pygame.display.flip()

    def _boxed(self, lines, pos, alpha=150) -> pygame.Surface:
        """Text lines on a translucent dark box, readable over any picture; blitted at pos if given."""
        key = f"box{alpha}" + "\n".join(lines)
        box = self._texts.get(key)
        if box is None:
            # "key\tdescription" lines become two aligned columns (the font is proportional)
            cells = [line.split("\t", 1) for line in lines]
            col = max((self.text(c[0]).get_width() for c in cells if len(c) == 2), default=0) + 16
            w = max(self.text(c[0]).get_width() if len(c) == 1 else col + self.text(c[1]).get_width()
                    for c in cells) + 16
            box = pygame.Surface((w, len(lines) * self.line_h + 12), pygame.SRCALPHA)
            box.fill((0, 0, 0, alpha))
            for j, c in enumerate(cells):
                box.blit(self.text(c[0]), (8, 6 + j * self.line_h))
                if len(c) == 2:
                    box.blit(self.text(c[1]), (8 + col, 6 + j * self.line_h))
            self._texts[key] = box
        if pos is not None:
            self.screen.blit(box, pos)
        return box

    def save(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        pygame.image.save(self.screen, path)

    def close(self):
        pygame.display.quit()

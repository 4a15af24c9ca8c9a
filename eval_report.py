"""What evaluate.py writes besides the numbers: plots, side-by-side videos, the headline dict and
report.md. Everything here reads the report evaluate.py computed; nothing is measured here."""
import math
import os

import numpy as np


def plot_all(out, ro, collapse, cf, cf_frames, truth_frames, horizons):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    paths = {}
    steps = np.arange(1, ro["horizon"] + 1)

    def save(fig, name):
        p = os.path.join("plots", name)
        fig.tight_layout()
        fig.savefig(os.path.join(out, p), dpi=90)
        plt.close(fig)
        paths[name[:-4]] = p

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    ax[0].plot(steps, ro["psnr_vs_tokens"], label="vs decoded true tokens")
    if "psnr_vs_video" in ro:
        ax[0].plot(steps, ro["psnr_vs_video"], label="vs true video frames")
    if "sandbox" in ro:
        ax[0].plot(steps[:ro["sandbox"]["steps"]], ro["sandbox"]["psnr"], label="vs sandbox re-render")
    ax[0].plot(steps, ro["psnr_copy_last_frame"], "k--", label="copy last context frame")
    ax[1].plot(steps, ro["ssim_vs_tokens"], label="vs decoded true tokens")
    if "ssim_vs_video" in ro:
        ax[1].plot(steps, ro["ssim_vs_video"], label="vs true video frames")
    for a, name in zip(ax, ("PSNR (dB)", "SSIM")):
        a.set_xlabel("rollout step"); a.set_ylabel(name); a.legend(fontsize=7)
        for h in horizons:
            a.axvline(h, color="grey", lw=0.5)
    save(fig, "rollout_quality.png")

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    ax[0].plot(steps, ro["unique_codes"], label="prediction"); ax[0].plot(steps, ro["unique_codes_truth"], label="truth")
    ax[0].set_ylabel("unique codes per frame")
    ax[1].plot(steps, ro["code_entropy"], label="prediction"); ax[1].plot(steps, ro["code_entropy_truth"], label="truth")
    ax[1].set_ylabel("code entropy (bits)")
    for a in ax:
        a.set_xlabel("rollout step"); a.legend(fontsize=7)
    save(fig, "code_diversity.png")

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
    ax[0].plot(steps, ro["kl"]); ax[0].set_ylabel("KL(teacher-forced || rollout) nats")
    ax[1].plot(steps, ro["entropy_tf"], label="teacher-forced"); ax[1].plot(steps, ro["entropy_ar"], label="rollout")
    ax[1].set_ylabel("logit entropy (nats)")
    ax[2].plot(steps, ro["confidence_tf"], label="teacher-forced"); ax[2].plot(steps, ro["confidence_ar"], label="rollout")
    ax[2].set_ylabel("mean max probability")
    for a in ax:
        a.set_xlabel("rollout step")
    ax[1].legend(fontsize=7); ax[2].legend(fontsize=7)
    save(fig, "logits.png")

    fig, ax = plt.subplots(figsize=(8, 3.4))
    groups = ["step0", "step1", "steps10_19"]
    names = list(collapse["rules"]) + ["ground truth"]
    vals = [collapse["rules"][n] for n in collapse["rules"]] + [collapse["ground_truth"]]
    for i, (n, v) in enumerate(zip(names, vals)):
        ax.bar(np.arange(3) + i * 0.14, [v[g] for g in groups], 0.14, label=n)
    ax.set_xticks(np.arange(3) + 0.35, groups); ax.set_ylabel("unique codes per frame"); ax.legend(fontsize=7)
    ax.set_title("first-step collapse test")
    save(fig, "collapse.png")

    # counterfactual montage of episode 0: one row per action, one column per step (truth rows below)
    names = list(cf_frames)  # the counterfactual actions, in the order they were run
    rows = [cf_frames[n][0] for n in names] + ([truth_frames[n][0, 1:] for n in names] if truth_frames else [])
    labels = names + ([n + " (truth)" for n in names] if truth_frames else [])
    montage = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
    h = rows[0].shape[1]
    fig = plt.figure(figsize=(montage.shape[1] / 60 + 1.2, montage.shape[0] / 60))
    ax = fig.add_axes([0.18, 0, 0.82, 1])
    ax.imshow(montage, interpolation="nearest")
    ax.set_yticks(np.arange(len(rows)) * h + h / 2, labels, fontsize=7)
    ax.set_xticks([])
    p = os.path.join("plots", "counterfactuals.png")
    fig.savefig(os.path.join(out, p), dpi=60)
    plt.close(fig)
    paths["counterfactuals"] = p
    return paths


def write_video(path, left, right, fps, scale, context=0):
    """left | right uint8 [T, H, W, 3] side by side, H.264. The first `context` frames are real
    context on both sides."""
    import cv2
    from sandbox.formats import VideoWriter
    T, H, W, _ = left.shape
    video = VideoWriter(path, 2 * W * scale, H * scale + 16, max(1, int(round(fps))), crf=18, preset="veryfast")
    for t in range(T):
        img = np.concatenate([left[t], right[t]], 1)
        img = cv2.resize(img, (2 * W * scale, H * scale), interpolation=cv2.INTER_NEAREST)
        bar = np.zeros((16, img.shape[1], 3), np.uint8)
        label = f"context {t + 1}/{context}" if t < context else f"ground truth | prediction  step {t - context + 1}"
        cv2.putText(bar, label, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        video.write(np.concatenate([bar, img], 0))
    video.close()


def at(values, h):
    """Mean of a per-step list over steps 1..h."""
    v = np.asarray(values[:h], dtype=np.float64)
    return float(v.mean()) if v.size else float("nan")


def headline(report, horizons):
    ro, cf, tf, col = report["rollout"], report["action"], report["teacher_forced"], report["collapse"]
    hl = {"tf_cross_entropy": tf["cross_entropy"], "tf_accuracy": tf["accuracy"]}
    for h in horizons:
        hl[f"psnr@{h}"] = at(ro["psnr_vs_tokens"], h)
        hl[f"ssim@{h}"] = at(ro["ssim_vs_tokens"], h)
        if "psnr_vs_video" in ro:
            hl[f"psnr_video@{h}"] = at(ro["psnr_vs_video"], h)
        if "psnr_pooled_vs_video" in ro:
            hl[f"psnr_pooled_video@{h}"] = at(ro["psnr_pooled_vs_video"], h)
            hl[f"psnr_pooled_video_copy_baseline@{h}"] = at(ro["psnr_pooled_copy_vs_video"], h)
    hl["psnr_copy_baseline@%d" % horizons[0]] = at(ro["psnr_copy_last_frame"], horizons[0])
    hl["psnr@1"], hl["psnr_copy_baseline@1"] = at(ro["psnr_vs_tokens"], 1), at(ro["psnr_copy_last_frame"], 1)
    if "psnr_pooled_vs_tokens" in ro:
        for h in (1, horizons[0]):
            hl[f"psnr_pooled@{h}"] = at(ro["psnr_pooled_vs_tokens"], h)
            hl[f"psnr_pooled_copy_baseline@{h}"] = at(ro["psnr_pooled_copy_last_frame"], h)
    hl["tf_copy_baseline_accuracy"] = tf["copy_last_frame_accuracy"]
    hl["tf_argmax_decoded_psnr"], hl["tf_copy_decoded_psnr"] = tf["argmax_decoded_psnr"], tf["copy_last_frame_decoded_psnr"]
    if "argmax_decoded_psnr_pooled" in tf:
        hl["tf_argmax_decoded_psnr_pooled"] = tf["argmax_decoded_psnr_pooled"]
        hl["tf_copy_decoded_psnr_pooled"] = tf["copy_last_frame_decoded_psnr_pooled"]
    if "guided" in tf:  # the same, for the predictor with the rollouts' guidance
        g = tf["guided"]
        hl.update({"tf_guidance": g["guidance"], "tf_accuracy_guided": g["accuracy"],
                   "tf_cross_entropy_guided": g["cross_entropy"],
                   "tf_argmax_decoded_psnr_pooled_guided": g["argmax_decoded_psnr_pooled"]})
        if "key_guidance" in g:
            hl["tf_key_guidance"] = g["key_guidance"]
    hl["sharpness_ratio_min"] = float(np.min(ro["sharpness_ratio"]))
    hl["sharpness_ratio_mean"] = float(np.mean(ro["sharpness_ratio"]))
    if "sandbox" in ro:
        hl["psnr_sandbox@%d" % ro["sandbox"]["steps"]] = at(ro["sandbox"]["psnr"], ro["sandbox"]["steps"])
    hl.update({"code_diversity_ratio": ro["code_diversity_ratio"], "code_diversity_match": ro["code_diversity_match"],
               "kl_tf_vs_rollout": at(ro["kl"], ro["horizon"]),
               "controllability": cf["controllability"], "yaw_direction_accuracy": cf["yaw_direction_accuracy"],
               "pitch_direction_accuracy": cf["pitch_direction_accuracy"], "action_response": cf["action_response"]})
    if "sandbox" in cf:
        hl["ws_assignment_accuracy"] = cf["sandbox"]["forward_vs_back_assignment_accuracy"]
        if "forward_vs_back_identical_fraction" in cf["sandbox"]:  # items scored wrong for not responding at all
            hl["ws_identical_fraction"] = cf["sandbox"]["forward_vs_back_identical_fraction"]
        if "truth_mean_dx_yaw_right_minus_left" in cf["sandbox"]:  # 1 = the view turns as far as the truth's
            for name, mine, truth in (("yaw", "mean_dx_yaw_right_minus_left", "truth_mean_dx_yaw_right_minus_left"),
                                      ("pitch", "mean_dy_pitch_down_minus_up", "truth_mean_dy_pitch_down_minus_up")):
                t = cf["sandbox"][truth]
                hl[f"{name}_shift_vs_truth"] = cf[mine] / t if abs(t) > 1e-9 else float("nan")
    for rule in ("argmax", "top-k 50"):
        hl[f"unique_codes_step1_{rule.replace(' ', '')}"] = col["rules"][rule]["step1"]
    for rule in col["rules"]:  # the rollouts' own sampler (reports made before it was listed lack it)
        if rule.startswith("rollout sampler"):
            hl["unique_codes_step1_rollout_sampler"] = col["rules"][rule]["step1"]
    hl["unique_codes_step1_truth"] = col["ground_truth"]["step1"]
    if "idm_rollout" in ro:
        for name, d in (("rollout", ro["idm_rollout"]), ("ceiling", report["idm"])):
            hl[f"idm_keyboard_f1_{name}"] = d["keyboard_f1"]
            hl[f"idm_keyboard_f1_over_chance_{name}"] = d["keyboard_f1_over_chance"]
            hl[f"idm_camera_accuracy_{name}"] = d["camera_accuracy"]
            hl[f"idm_camera_accuracy_over_chance_{name}"] = d["camera_accuracy_over_chance"]
    return hl


def finite_or_none(obj):
    """NaN/inf -> None everywhere, so report.json is strict JSON (NaN = "not measurable here")."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write_markdown(path, report, plots):
    hl, ro, cf, col = report["headline"], report["rollout"], report["action"], report["collapse"]
    lines = [f"# World-model evaluation: {'UNTRAINED baseline of ' if report['untrained'] else ''}{report['checkpoint']}", "",
             f"Data `{report['data']}`, {len(ro['episodes'])} held-out episodes, context {ro['context']}, horizon "
             f"{ro['horizon']}, sampler {ro['sampler']}; {report['seconds']:.0f} s on {report['device']}.", "",
             "| headline | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in hl.items()]
    lines += ["", "PSNR@h / SSIM@h are means over rollout steps 1..h against the decoded true tokens "
              "(`psnr_video`: against the true video frames; the copy baseline repeats the last context frame). "
              "code_diversity_match is min(r, 1/r) of the per-step unique-code ratio r (1 = as diverse as the truth). "
              "controllability = mean of " + ", ".join(cf["controllability_parts"]) + " (direction skill = max(0, 2 acc - 1): "
              "0 at chance; action response = Jensen-Shannon divergence, in units of ln 2, between the first-step predictions "
              "for opposite actions from the same state).", "",
              "## Collapse test (unique codes per frame)", "", "| rule | step 0 | step 1 | steps 10-19 |", "|---|---|---|---|"]
    for name, v in list(col["rules"].items()) + [("ground truth", col["ground_truth"])]:
        lines.append(f"| {name} | {v['step0']:.1f} | {v['step1']:.1f} | {v['steps10_19']:.1f} |")
    lines += ["", "## Action tests", "", "| measure | value |", "|---|---|"]
    for k, v in cf.items():
        if isinstance(v, dict) and k != "sandbox":
            lines += [f"| {k}: {kk} | {fmt(vv)} |" for kk, vv in v.items()]
        elif not isinstance(v, (dict, list)):
            lines.append(f"| {k} | {fmt(v)} |")
    for k, v in cf.get("sandbox", {}).items():
        vals = v.items() if isinstance(v, dict) else [("", v)]
        lines += [f"| sandbox {k} {kk} | {fmt(vv)} |" for kk, vv in vals]
    if "idm" in report:
        lines += ["", "## Inverse-dynamics probe", "", "Scores against the recorded actions (and, in brackets, minus the "
                  "same predictions scored against shuffled actions: 0 = the frames say nothing about their own actions).", "",
                  "| pairs | keyboard F1 | camera direction accuracy (turning steps) |", "|---|---|---|"]
        for name, d in (("held-out truth (ceiling)", report["idm"]), ("truth, rollout steps", ro["idm_truth_same_steps"]),
                        ("rollout (recorded actions)", ro["idm_rollout"])):
            lines.append(f"| {name} | {fmt(d['keyboard_f1'])} ({fmt(d['keyboard_f1_over_chance'])}) | "
                         f"{fmt(d['camera_accuracy'])} ({fmt(d['camera_accuracy_over_chance'])}) |")
    lines += ["", "## Plots", ""] + [f"![{k}]({p})" for k, p in plots.items()]
    if report.get("videos"):
        lines += ["", "Videos (ground truth | prediction): " + ", ".join(f"[{os.path.basename(v)}]({v})" for v in report["videos"])]
    lines += ["", "Notes: " + "; ".join(report["notes"]) if report["notes"] else ""]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")

"""Ochre's sandbox: a procedural Minecraft-like voxel world rendered in first person.

Contract API (see ochre_contract.md): World, PlayerState, spawn_state, step_physics, render,
rollout, ScriptedPlayer, load_groundtruth.
"""
from .formats import load_groundtruth
from .physics import PlayerState, spawn_state, step_physics
from .player import ScriptedPlayer, rollout
from .render import render
from .world import BIOME_NAMES, World

__all__ = ["World", "PlayerState", "spawn_state", "step_physics", "render", "rollout", "ScriptedPlayer",
           "load_groundtruth", "BIOME_NAMES"]

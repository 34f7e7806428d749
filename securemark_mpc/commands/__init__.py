"""CLI commands: one module per verb, each exposing COMMAND (a registry, not an if-chain)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass

COMMAND_MODULES = (
    "train",
    "evaluate",
    "issue",
    "customers",
    "verify",
    "queries",
    "serve",
    "attack",
    "robustness",
    "audit",
    "demo",
)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def load_commands() -> dict[str, Command]:
    commands = {}
    for module_name in COMMAND_MODULES:
        command = importlib.import_module(f"securemark_mpc.commands.{module_name}").COMMAND
        commands[command.name] = command
    return commands

"""What every fsar command shares: its options, how it builds its config, and its one error guard.

`pipeline.cli` (the stage commands) and `pipeline.predict.cli` (`export`, `predict`) both import this
module and nothing of each other; `python -m flows` uses it too. Commands run their body through
`guarded`, which turns a user-facing error (`FsarError`, and a Prefect flow run that failed on one)
into one `error: ...` line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, NoReturn

import typer

from pipeline.errors import FsarError, os_error_message
from pipeline.logs import install, level_for
from pipeline.runfile import find_run_file, resolve
from pipeline.secrets import redact_text

__all__ = [
    "APP_SETTINGS",
    "ArtifactsOpt",
    "ConfigOpt",
    "DatasetOpt",
    "InputOpt",
    "PresetOpt",
    "QuietOpt",
    "SetOpt",
    "VideoListOpt",
    "VideoRootOpt",
    "VerboseOpt",
    "command_config",
    "command_resolved",
    "echo",
    "fail",
    "guarded",
    "one_line",
    "show_logs",
]

APP_SETTINGS: dict[str, Any] = {"no_args_is_help": True, "add_completion": False, "pretty_exceptions_enable": False}  # fsar and `python -m flows`

SET_HELP = (
    "config override key=value (repeatable; a key given twice, or by a flag and --set, must have the same value, "
    "else it is an error; these win over the run file and the preset)"
)

DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="dataset name (see `fsar datasets`); default: the run file's `dataset:`")]
PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="preset in pipeline/configs/ (`fsar presets`) or a YAML path; default: the run file's, else the dataset's own"),
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help=SET_HELP)]
ArtifactsOpt = Annotated[str | None, typer.Option("--artifacts", help="artifact root: a local folder or file:// URL")]
InputOpt = Annotated[
    list[str] | None, typer.Option("--input", help="pin an upstream artifact: STAGE=VERSION (repeatable; default: what the config implies)")
]
VideoRootOpt = Annotated[str | None, typer.Option("--video-root", help="folder holding the dataset's videos")]
VideoListOpt = Annotated[str | None, typer.Option("--video-list", help="custom dataset: CSV with path,label,split")]
ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="run file (YAML) with this run's settings; default: ./fsar.yaml when it exists (`fsar config` shows what came from where)"),
]


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="print warnings and errors only")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="print debug lines too")]


def show_logs(quiet: bool = False, verbose: bool = False, prefect: bool = False) -> None:
    """Install the handler that prints fsar's log lines (`pipeline.logs`), at the level -q / -v ask for."""
    install(level_for(quiet, verbose), prefect=prefect)


def one_line(exc: BaseException) -> str:
    """An error's message on one line (or its type when it has none), secrets masked: what a flow run's state and log
    keep of a failure."""
    return " ".join(redact_text(str(exc)).split()) or type(exc).__name__


def echo(text: Any = "", err: bool = False) -> None:
    """Print a command's output line(s), secrets masked (`pipeline.secrets.redact_text`): what every command prints."""
    typer.echo(redact_text(str(text)), err=err)


def fail(exc: BaseException | str) -> NoReturn:
    """Print `error: ...` on stderr, on a line of its own, and exit 2 (a message that is a short block keeps its
    lines; secrets masked). Live progress bars are closed first, so the error never continues a bar's line."""
    close_progress_bars()
    lines = [line.rstrip() for line in redact_text(str(exc)).strip().splitlines() if line.strip()] or [type(exc).__name__]
    lines[0] = " ".join(lines[0].split())
    typer.secho("error: " + "\n".join(lines), fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def close_progress_bars() -> None:
    """Close every live tqdm bar of this process (tqdm keeps them), so what is printed next starts a line of its own."""
    import sys

    if "tqdm" not in sys.modules:  # no bar was ever made
        return
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar whose stream is gone: nothing left to move out of the way
            pass


def guarded(fn: Callable[[], Any]) -> Any:
    """Run a command body; a user-facing error is one line on stderr and exit 2 (the one place that decides which):
    any FsarError (bad input, broken artifact), any OSError (no space, permission denied, a read-only disk, ...)."""
    try:
        return fn()
    except FsarError as exc:
        fail(exc)
    except OSError as exc:
        fail(FsarError(os_error_message(exc)))
    except Exception as exc:
        if _failed_flow_run(exc):  # the flow already reduced its cause to one line: its state message
            fail(exc)
        raise


def _failed_flow_run(exc: BaseException) -> bool:
    import sys

    module = sys.modules.get("prefect.exceptions")  # only when a flow ran in this process
    return module is not None and isinstance(exc, module.FailedRun)


def command_resolved(
    dataset: str | None,
    preset: str | None,
    sets: Iterable[str] | None,
    artifacts: str | None = None,
    video_root: str | None = None,
    video_list: str | None = None,
    config: str | None = None,
    *,
    announce: bool = True,
    require_dataset: bool = True,
):
    """The run file (`--config`, else ./fsar.yaml if there) + the command's options, resolved (`runfile.resolve`)."""
    path = find_run_file(config)
    if path is not None and announce:
        echo(f"[fsar] settings from run file {path}", err=True)
    return resolve(dataset, preset, list(sets or []), artifacts, video_root, video_list, path, require_dataset)


def command_config(
    dataset: str | None,
    preset: str | None,
    sets: Iterable[str] | None,
    artifacts: str | None = None,
    video_root: str | None = None,
    video_list: str | None = None,
    config: str | None = None,
):
    """The Config a command runs with: preset < run file < this command line."""
    return command_resolved(dataset, preset, sets, artifacts, video_root, video_list, config).config

#!/usr/bin/env python
"""check: which files the Sonic workflows need are found / missing / wrong, by content, no network (exit 0 when
every required one is in place). download: fetch from Hugging Face exactly what check reports missing or broken;
the SVD-xt repo is gated (accept its licence, pass --token or set HF_TOKEN). HF_ENDPOINT picks a mirror,
HF_HUB_ETAG_TIMEOUT how long to wait for it. The models folder: --models-dir, else $SONIC_MODELS_DIR, else
ComfyUI's models/ for a pack in ComfyUI/custom_nodes/; Sonic's files go to sonic/, the SVD checkpoint to
checkpoints/."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sonic_model.weights.model_catalog import (  # noqa: E402
    CATALOG, FileReport, all_required_found, check_models_dir, format_report, human_size,
)

ENV_MODELS_DIR = "SONIC_MODELS_DIR"
STAGING = ".sonic_download"  # beside sonic/ and checkpoints/, so ComfyUI never lists a half-fetched file
AGAIN = "run the command again"


class UsageError(Exception):
    """A command-line mistake, reported in one line with exit code 2."""


class Download(NamedTuple):
    report: FileReport
    repo_file: str
    dest: Path  # the official place (whisper: a file in the official folder)


def default_models_dir(env: dict | None = None, pack: Path = ROOT) -> Path:
    """$SONIC_MODELS_DIR, else ComfyUI/models for a pack in ComfyUI/custom_nodes/<pack>/."""
    env = os.environ if env is None else env
    if env.get(ENV_MODELS_DIR):
        return Path(env[ENV_MODELS_DIR]).expanduser()
    if pack.parent.name == "custom_nodes" and (pack.parent.parent / "models").is_dir():
        return pack.parent.parent / "models"
    raise UsageError(f"No models folder: this pack is not inside ComfyUI/custom_nodes/. Pass --models-dir "
                     f"/path/to/ComfyUI/models (or set {ENV_MODELS_DIR}).")


def run_check(models: Path, out: Callable[[str], None] = print, reports: list[FileReport] | None = None) -> int:
    reports = check_models_dir(models) if reports is None else reports
    quoted = f'"{models}"' if any(c in str(models) for c in " ()&;'") else str(models)
    out(format_report(reports, base=models, download_command=f"python tools/models.py download --models-dir {quoted}"))
    return 0 if all_required_found(reports) else 1


def plan_downloads(reports: Iterable[FileReport], only: Iterable[str] | None = None,
                   required_only: bool = False) -> list[Download]:
    """Exactly the files the check says are missing or broken (optionally some slots, or required ones only)."""
    return [Download(r, f, r.target / f if r.entry.kind == "whisper_folder" else r.target) for r in reports
            if (not only or r.entry.slot in only) and (r.entry.required or not required_only) for f in r.fetch]


def explain_error(exc: BaseException, item: Download, endpoint: str) -> str:
    """One line: what failed and what to do (matched by exception class name, across huggingface_hub versions)."""
    entry, head = item.report.entry, f"{item.repo_file} from {item.report.entry.repo} failed"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    names = {c.__name__ for e in (exc, exc.__cause__ or exc.__context__) if e for c in type(e).__mro__}
    if "GatedRepoError" in names or (entry.gated and (status in (401, 403) or "RepositoryNotFoundError" in names)):
        return (f"{head}: the repository is gated. Log in at {entry.url}, accept the licence, create a read token at "
                "https://huggingface.co/settings/tokens and pass --token hf_... (or set HF_TOKEN).")
    if names & {"ConnectError", "ConnectionError", "TimeoutException", "Timeout", "NetworkError", "ReadTimeout",
                "LocalEntryNotFoundError", "OfflineModeIsEnabled", "RemoteProtocolError"}:
        return f"{head}: lost the connection to {endpoint}. {AGAIN.capitalize()} to continue; fetched files are kept."
    if status is not None:
        return f"{head}: the hub answered HTTP {status}. Try again later, or download it by hand from {entry.url}."
    return f"{head}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"


def fetch(item: Download, models: Path, token: str | None, endpoint: str) -> None:
    """One repo file via huggingface_hub (its progress bar, retries and resume) into a staging folder, then moved
    into place; shutil.move copies across disks (a linked sonic/ folder)."""
    from huggingface_hub import hf_hub_download

    staging = models / STAGING / item.report.entry.repo.replace("/", "--")
    fetched = hf_hub_download(item.report.entry.repo, item.repo_file, local_dir=staging, token=token,
                              endpoint=endpoint)
    item.dest.parent.mkdir(parents=True, exist_ok=True)
    if item.dest.exists() and not item.report.replace:
        raise FileExistsError(f"{item.dest} appeared meanwhile; left as it is")
    shutil.move(fetched, item.dest)


def _cannot_start(endpoint: str, timeout: float) -> str | None:
    """Why no download can work now (offline mode, the hub unreachable), or None."""
    if any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return f"HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it (and TRANSFORMERS_OFFLINE) and {AGAIN}."
    try:  # any HTTP answer will do; honours HTTP(S)_PROXY like the hub
        urllib.request.urlopen(urllib.request.Request(endpoint + "/", method="HEAD"), timeout=timeout).close()
        return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
    return (f"Cannot reach the Hugging Face hub at {endpoint} ({str(reason) or type(reason).__name__}). Check the "
            "internet connection or proxy (HTTPS_PROXY), or use a mirror with HF_ENDPOINT (e.g. "
            f"https://hf-mirror.com), then {AGAIN}: files already fetched are kept.")


def download_missing(models: Path, token: str | None = None, endpoint: str | None = None,
                     only: Iterable[str] | None = None, required_only: bool = False, dry_run: bool = False,
                     out: Callable[[str], None] = print) -> int:
    """Fetch what the check says is missing; exit code 0 when every planned file arrived and checks out."""
    models.mkdir(parents=True, exist_ok=True)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    plan = plan_downloads(check_models_dir(models), only, required_only)
    if not plan:
        out("Nothing to download: no missing or broken files" + (" among those selected." if only else "."))
        return run_check(models, out)
    out(("Would fetch" if dry_run else "Fetching") + f" {len(plan)} file(s) from {endpoint}:")
    for item in plan:
        entry = item.report.entry
        size = f" ({human_size(entry.size)})" if entry.size and not entry.gated else ""
        broken = ", replacing the broken file there" if item.report.replace and item.dest.exists() else ""
        out(f"  {entry.repo}: {item.repo_file} -> {item.dest}{size}{broken}")
        if entry.gated and not (token or os.environ.get("HF_TOKEN")):
            out(f"  {entry.repo} is gated: accept its licence at {entry.url} and pass --token hf_... (or set "
                "HF_TOKEN), unless `hf auth login` saved a token already.")
    problem = None if dry_run else _cannot_start(endpoint, float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10))
    if dry_run or problem:
        out(problem or "(dry run: nothing fetched)")
        return 1 if problem else 0
    failed = set()
    for i, item in enumerate(plan, 1):
        out(f"[{i}/{len(plan)}] {item.repo_file} -> {item.dest}")
        try:
            fetch(item, models, token or None, endpoint)
        except KeyboardInterrupt:
            out(f"Interrupted: {AGAIN} to continue; files already fetched are kept.")
            return 1
        except Exception as e:  # one failure must not stop the other files
            failed.add(item.report.entry.slot)
            out("  " + explain_error(e, item, endpoint))
    reports = check_models_dir(models)
    unchecked = sorted({item.report.entry.slot for item in plan} - failed - {r.entry.slot for r in reports if r.ok})
    for slot in unchecked:
        out(f"  {slot}: downloaded, but the file does not check out (see the table): the source served something "
            "else; try again or download it by hand.")
    out("")
    run_check(models, out, reports)
    if not (failed or unchecked):
        shutil.rmtree(models / STAGING, ignore_errors=True)
    return 1 if failed or unchecked else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/models.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("check", "download"))
    parser.add_argument("--models-dir", help=f"ComfyUI's models folder (default: ${ENV_MODELS_DIR}, else "
                                             "../../models when this pack is in ComfyUI/custom_nodes)")
    parser.add_argument("--token", help="download: Hugging Face token for the gated SVD repo (default: $HF_TOKEN)")
    parser.add_argument("--dry-run", action="store_true", help="download: list what would be fetched, fetch nothing")
    parser.add_argument("--only", nargs="+", choices=[e.slot for e in CATALOG], metavar="SLOT",
                        help="download only these: " + ", ".join(e.slot for e in CATALOG))
    parser.add_argument("--required-only", action="store_true", help="download: skip the face detector and RIFE")
    args = parser.parse_args(argv)
    try:
        models = Path(args.models_dir).expanduser() if args.models_dir else default_models_dir()
        if args.command == "check":
            if not models.is_dir():
                raise UsageError(f"{models} is not a folder: pass --models-dir /path/to/ComfyUI/models")
            return run_check(models.resolve())
        return download_missing(models.resolve(), token=args.token, only=args.only,
                                required_only=args.required_only, dry_run=args.dry_run)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `kiln` command: a thin layer over library functions.

Each verb lives in a small ``_add_<verb>`` function that registers its parser and handler; handlers import what
they need lazily so ``kiln --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

from . import __version__
from ._cli_options import store_options, trust_option

Handler = Callable[[argparse.Namespace], int]

_PACKAGE_TRUST = (
    "a package names a factory that kiln imports only when trusted: kiln's own, a kiln.factories entry point, or "
    "--trust"
)

# Subsystems that bring their own verbs: each module has ``add_commands(sub)``, registering parsers whose handlers
# import the subsystem lazily (the module itself imports only argparse, so `kiln --help` stays instant).
_VERB_MODULES: tuple[str, ...] = ("kiln.jobs.commands", "kiln.ui.commands", "kiln.tune.commands")


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document (its shape: docs/cli.md)")


def _emit(**fields: Any) -> None:
    """Print the ``--json`` document of a verb (kiln._cli_json: the shapes docs/cli.md describes)."""
    from . import _cli_json

    print(_cli_json.dumps(_cli_json.document(**fields)))


def _info(args: argparse.Namespace) -> int:
    import torch

    from .store.location import describe_store
    from .train.model import default_device

    # The store is shown as describe_store() spells it: a database URL with its password masked.
    facts = {"kiln": __version__, "torch": torch.__version__, "device": str(default_device()),
             "threads": torch.get_num_threads(), "store": describe_store()}  # fmt: skip
    if args.json:
        _emit(**facts)
        return 0
    for key, value in facts.items():
        print(f"{key} {value}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="show kiln and torch versions and the device kiln would train on")
    _json_option(parser)
    parser.set_defaults(handler=_info)


def _print_trust(store: Any, versions: Any, trust: Sequence[str]) -> bool:
    """Print each version's factory and whether it is trusted here; True when one is untrusted."""
    from .export.trust import env_trust, version_trust

    found = version_trust(store, versions, (*trust, *env_trust()))
    for item in found:
        print(item.describe())
    return any(item.untrusted for item in found)


def _open_store(args: argparse.Namespace) -> Any:
    from .store import Store

    return Store(args.store, create=False, blobs=getattr(args, "blobs", None))


def _print(*renderables: Any) -> None:
    import shutil

    from rich.console import Console

    console = Console(width=shutil.get_terminal_size((120, 24)).columns, soft_wrap=False)
    for renderable in renderables:
        console.print(renderable)


def _runs_list(args: argparse.Namespace) -> int:
    from . import _cli_json
    from .store import tables

    runs = _open_store(args).runs(name=args.name, status=args.status, limit=args.limit)
    if args.json:
        _emit(runs=[_cli_json.run_summary(run) for run in runs])
        return 0
    _print(tables.run_table(runs))
    return 0


def _runs_show(args: argparse.Namespace) -> int:
    from . import _cli_json
    from .store import tables

    run = _open_store(args).run(args.run_id)
    if args.json:
        _emit(run=_cli_json.run_detail(run))
        return 0
    _print(*tables.run_detail(run))
    return 0


def _add_runs(sub: argparse._SubParsersAction) -> None:
    runs = sub.add_parser(
        "runs",
        help="list and show tracked training runs",
        description="A run whose process died without finishing it (same machine) is shown, and recorded, as "
        "killed; one running on another machine that has not written for 30 minutes is shown as stale.",
    ).add_subparsers(metavar="ACTION")
    listing = runs.add_parser("list", help="runs, newest first")
    listing.add_argument("--name", help="only runs with this name")
    listing.add_argument("--status", choices=["running", "finished", "failed", "killed", "pruned", "stale"])
    listing.add_argument("--limit", type=int, default=20)
    show = runs.add_parser("show", help="params, system info, latest metrics and artifacts of one run")
    show.add_argument("run_id", help="a run id or a unique prefix of one")
    for parser, handler in ((listing, _runs_list), (show, _runs_show)):
        store_options(parser)
        _json_option(parser)
        parser.set_defaults(handler=handler)


def _models_list(args: argparse.Namespace) -> int:
    from . import _cli_json
    from .store import tables

    models = _open_store(args).models()
    if args.json:
        _emit(models=[_cli_json.model_summary(model) for model in models])
        return 0
    _print(tables.model_table(models))
    return 0


def _models_show_json(store: Any, args: argparse.Namespace) -> int:
    from . import _cli_json
    from .export.trust import env_trust, version_trust

    if "@" in args.reference:
        versions = [store.version(args.reference)]
        fields: dict[str, Any] = {"version": _cli_json.version(versions[0])}
    else:
        versions = store.versions(args.reference)
        fields = {"model": args.reference, "versions": [_cli_json.version(v) for v in versions],
                  "alias_history": _cli_json.alias_moves(store.alias_history(args.reference))}  # fmt: skip
    _emit(**fields, trust=_cli_json.trust(version_trust(store, versions, (*args.trust, *env_trust()))))
    return 0


def _models_show(args: argparse.Namespace) -> int:
    from .store import tables

    store = _open_store(args)
    if args.json:
        return _models_show_json(store, args)
    if "@" in args.reference:
        versions = [store.version(args.reference)]
        _print(*tables.version_detail(versions[0]))
    else:
        versions = store.versions(args.reference)
        moves = store.alias_history(args.reference)
        _print(
            tables.version_table(args.reference, versions),
            *([tables.alias_table(args.reference, moves)] if moves else []),
        )
    _print_trust(store, versions, args.trust)
    return 0


def _models_promote(args: argparse.Namespace) -> int:
    previous = _open_store(args).promote(args.name, args.version, args.alias)
    print(f"{args.name}@{args.alias} -> version {args.version}" + (f" (was {previous})" if previous else ""))
    return 0


def _models_verify(args: argparse.Namespace) -> int:
    from .store import tables

    store = _open_store(args)
    report = store.verify(args.reference)
    if args.json:
        from . import _cli_json
        from .export.trust import env_trust, version_trust

        found = version_trust(store, store.versions_for(args.reference), (*args.trust, *env_trust()))
        failed = not report.ok or (args.strict and any(item.untrusted for item in found))
        _emit(**_cli_json.verify(report), trust=_cli_json.trust(found), strict=args.strict, passed=not failed)
        return 1 if failed else 0
    versions = "1 version" if report.versions == 1 else f"{report.versions} versions"
    summary = f"{report.files} files ({report.bytes / 1e6:.1f} MB) in {versions}"
    if not report.ok:
        _print(tables.verify_table(report))
        print(f"FAILED: {len(report.problems)} problem(s) in {summary}", file=sys.stderr)
        return 1
    print(f"ok: {summary} match their SHA-256")
    # Integrity and trust are separate questions: an intact package with an untrusted factory is still intact.
    untrusted = _print_trust(store, store.versions_for(args.reference), args.trust)
    if untrusted and args.strict:
        print("FAILED (--strict): a factory is untrusted here; trust it with --trust MODULE", file=sys.stderr)
        return 1
    return 0


def _models_delete(args: argparse.Namespace) -> int:
    store = _open_store(args)
    if args.all:
        numbers = store.delete_model(args.reference, force=args.force)
        print(f"deleted {args.reference} versions {numbers}")
    else:
        print(f"deleted {store.delete(args.reference, force=args.force).reference}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list, show, promote, verify and delete registered models")
    actions = models.add_subparsers(metavar="ACTION")
    listing = actions.add_parser("list", help="every model with its versions and aliases")
    show = actions.add_parser("show", help="a model's versions (NAME) or one version's details (NAME@VERSION)")
    show.add_argument("reference", help="digits, digits@3 or digits@production")
    promote = actions.add_parser("promote", help="point an alias (production, staging, ...) at a version")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("alias")
    verify = actions.add_parser("verify", help="re-hash every blob and report tampering (exit status 1)")
    verify.add_argument("reference", nargs="?", default=None, help="a model or version (default: the whole store)")
    verify.add_argument("--strict", action="store_true", help="also exit 1 when a version's factory is untrusted")
    for parser in (show, verify):
        trust_option(parser, f"{_PACKAGE_TRUST}; it judges each version's factory")
    for parser in (listing, show, verify):
        _json_option(parser)
    delete = actions.add_parser("delete", help="delete a version (NAME@VERSION) or, with --all, a whole model")
    delete.add_argument("reference", help="digits@3, digits@staging, or digits with --all")
    delete.add_argument("--all", action="store_true", help="delete every version of the model")
    delete.add_argument("--force", action="store_true", help="also remove aliases pointing at what is deleted")
    handlers = (
        (listing, _models_list),
        (show, _models_show),
        (promote, _models_promote),
        (verify, _models_verify),
        (delete, _models_delete),
    )
    for parser, handler in handlers:
        store_options(parser)
        parser.set_defaults(handler=handler)


def _store_gc(args: argparse.Namespace) -> int:
    report = _open_store(args).gc(grace_seconds=args.grace, dry_run=args.dry_run)
    verb = "would free" if report.dry_run else "freed"
    print(
        f"{verb} {report.blobs} unreferenced blob(s) and {report.temp_files} temp file(s): "
        f"{report.bytes} bytes ({report.bytes / 1e6:.1f} MB)"
    )
    return 0


def _store_migrate(args: argparse.Namespace) -> int:
    from .store.migrate import migrate_store

    print(migrate_store(args.store, blobs=args.blobs))
    return 0


def _store_copy(args: argparse.Namespace) -> int:
    from .store.copy import copy_store

    def progress(what: str, done: int, total: int) -> None:
        print(f"\r  {what}: {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)

    report = copy_store(
        args.source, args.destination, source_blobs=args.source_blobs, blobs=args.blobs, force=args.force,
        progress=progress,
    )  # fmt: skip
    print(report.describe())
    return 0


def _add_store(sub: argparse._SubParsersAction) -> None:
    store = sub.add_parser("store", help="maintain a store (gc, migrate, copy)")
    actions = store.add_subparsers(metavar="ACTION")
    gc = actions.add_parser(
        "gc",
        help="remove blobs no version or run artifact references, and temp files left by crashed writers",
        description="Delete blob files that no model version and no run artifact references (left by publishes or "
        "deletes that were interrupted) and temp files left by crashed writers, when older than --grace "
        "seconds. Prints how many files and bytes were freed. Live versions and artifacts are never touched.",
    )
    gc.add_argument(
        "--grace",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="only files older than this (default 3600). It protects publishes in flight: use 0 only when no "
        "process is writing to the store",
    )
    gc.add_argument("--dry-run", action="store_true", help="remove nothing; print what would be freed")
    store_options(gc)
    gc.set_defaults(handler=_store_gc)
    migrate = actions.add_parser(
        "migrate",
        help="create or upgrade the store's tables to this kiln's schema",
        description="Bring the store's schema to this kiln's revision, in place and in one transaction: creates the "
        "tables in an empty database, upgrades an older store (nothing is lost). A PostgreSQL store is only "
        "upgraded by this command; every kiln that uses it must then be this version or newer.",
    )
    store_options(migrate)
    migrate.set_defaults(handler=_store_migrate)
    copy = actions.add_parser(
        "copy",
        help="copy a whole store (SQLite <-> PostgreSQL): runs, metrics, models, aliases and blobs",
        description="Copy every run (params, metrics, artifacts), model, version, alias and alias move, and every "
        "blob they reference, from SRC to DST (each a directory or a database URL). Each blob is hashed on arrival; "
        "the rows are written in one transaction, so a failed copy leaves DST as it was. DST must be empty unless "
        "--force (then runs and models DST already has are left alone and reported).",
    )
    copy.add_argument("source", metavar="SRC", help="the store to copy: a directory or a database URL")
    copy.add_argument("destination", metavar="DST", help="where to copy it: a directory or a database URL")
    copy.add_argument("--source-blobs", metavar="PATH", default=None,
                      help="the blob directory of SRC, when it is a database store (default: as for DST)")  # fmt: skip
    copy.add_argument("--blobs", metavar="PATH", default=None,
                      help="the blob directory of DST, when it is a database store (default: $KILN_BLOBS, else "
                      "$KILN_HOME/blobs, else ./.kiln/blobs)")  # fmt: skip
    copy.add_argument("--force", action="store_true", help="copy into a DST that already has runs or models")
    copy.set_defaults(handler=_store_copy)


def _token(args: argparse.Namespace) -> str | None:
    import os

    from .errors import ConfigError

    if args.token is not None and args.token_env is not None:
        raise ConfigError("pass --token or --token-env, not both.")
    if args.token_env is None:
        return args.token
    token = os.environ.get(args.token_env)
    if not token:
        raise ConfigError(f"--token-env {args.token_env}: that environment variable is not set or empty.")
    return token


def _token_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--token", help="bearer token (visible in the process list: prefer --token-env)")
    group.add_argument("--token-env", metavar="NAME", help="read the bearer token from this environment variable")


def _serve(args: argparse.Namespace) -> int:
    from .serve import ServeConfig, serve

    config = ServeConfig(
        host=args.host, port=args.port, workers=args.workers, threads=args.threads, runtime=args.runtime,
        max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
        timeout_s=args.timeout, max_body_bytes=args.max_body_bytes, header_timeout_s=args.client_timeout,
        body_timeout_s=args.client_timeout, max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client, drain_timeout_s=args.drain_timeout,
        token=_token(args),
        access_log=not args.no_access_log, trust=tuple(args.trust), follow=args.follow,
        poll_interval_s=args.poll_interval,
    )  # fmt: skip
    return serve(args.reference, store=args.store, config=config)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve a registered model over HTTP (kiln JSON + Open Inference Protocol) until SIGTERM",
        description="Load NAME@ALIAS from the store (every hash verified), warm it up, then answer requests "
        "through a dynamic batcher. Binds 127.0.0.1 unless given a token.",
    )
    parser.add_argument("reference", help="digits, digits@3 or digits@production")
    store_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need a token)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads per worker (default: 1 on small boxes)"
    )
    parser.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto",
                        help="auto: ONNX Runtime when the package has a graph, else torch")  # fmt: skip
    parser.add_argument("--max-batch-size", type=int, default=64, help="samples per model call (default 64)")
    parser.add_argument("--max-delay-ms", type=float, default=0.0,
                        help="how long an idle model waits to fill a batch (default 0)")  # fmt: skip
    parser.add_argument("--max-queue", type=int, default=1024, help="queued requests before 503 (default 1024)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a request gets 504 (default 10)")
    parser.add_argument("--max-body-bytes", type=int, default=4 << 20, help="larger bodies get 413 (default 4 MiB)")
    parser.add_argument("--client-timeout", type=float, default=10.0,
                        help="seconds a client has to send its headers, and its body (default 10)")  # fmt: skip
    parser.add_argument("--max-connections", type=int, default=2048, help="open connections (default 2048)")
    parser.add_argument("--max-connections-per-client", type=int, default=None, metavar="N",
                        help="open connections one client address may hold (default: a quarter of "
                        "--max-connections); beyond it, 503 with Retry-After")  # fmt: skip
    parser.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="on SIGTERM, how long requests in flight may take to finish before workers are "
                        "killed and the exit status is 1 (default 30)")  # fmt: skip
    parser.add_argument("--follow", action=argparse.BooleanOptionalAction, default=None,
                        help="keep serving what the alias names: poll the store, load a promoted (or rolled back) "
                        "version in the background and switch to it without failing a request (default: follow "
                        "NAME@ALIAS; --follow also follows NAME, the newest version; --no-follow pins the version "
                        "named at start)")  # fmt: skip
    parser.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS",
                        help="how often a following server reads the alias from the store (default 5)")  # fmt: skip
    parser.add_argument("--no-access-log", action="store_true", help="do not write JSON access log lines")
    trust_option(parser, f"{_PACKAGE_TRUST}; it matters with the torch runtime")
    _token_options(parser)
    parser.set_defaults(handler=_serve)


def _predict(args: argparse.Namespace) -> int:
    import orjson

    from .errors import ConfigError, KilnError

    payload, data, media = None, None, None
    if args.file is not None:  # one WAV, PNG/JPEG or text file, for a model that declares its preprocessing
        media = _FILE_MEDIA.get(os.path.splitext(args.file)[1].lower())
        if media is None:
            raise ConfigError(f"--file {args.file}: kiln sends .wav, .png, .jpg/.jpeg and .txt files; use --input "
                              "for JSON.")  # fmt: skip
        with open(args.file, "rb") as handle:
            data = handle.read()
    else:
        text = sys.stdin.read() if args.input in (None, "-") else args.input
        if args.input is not None and args.input.startswith("@"):
            with open(args.input[1:], "rb") as handle:
                text = handle.read().decode()
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            raise ConfigError(
                f"the input is not valid JSON ({error}); pass e.g. --input '[[0.1, 0.2, ...]]'."
            ) from None
        if isinstance(payload, dict) and "inputs" in payload:
            payload = payload["inputs"]
    if args.local:
        from .serve.local import run_local

        local = run_local(args.model, payload, file=data, media=media[0] if media else None, store=args.store,
                          runtime=args.runtime, trust=args.trust)  # fmt: skip
        answer = {"outputs": local.outputs, **({"labels": local.labels} if local.labels is not None else {})}
    else:
        import httpx

        from .serve import Client

        with Client(args.url, token=_token(args)) as client:
            try:
                answer = client.answer(args.model.partition("@")[0], payload, data=data,
                                       content_type=media[1] if media else None)  # fmt: skip
            except httpx.HTTPError as error:
                raise KilnError(f"no answer from {args.url} ({error}); is `kiln serve` running there?") from None
    print(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY).decode())
    return 0


_FILE_MEDIA = {".wav": ("audio", "audio/wav"), ".png": ("image", "image/png"), ".jpg": ("image", "image/jpeg"),
               ".jpeg": ("image", "image/jpeg"), ".txt": ("text", "text/plain")}  # fmt: skip


def _add_predict(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict",
        help="send inputs to a running `kiln serve` (or, with --local, to the model in this process)",
        description='Inputs are JSON: one sample, a batch, {name: array} for several inputs, or {"inputs": ...}; for a '
        "model that declares its preprocessing, raw texts or rows, or one file with --file. Prints "
        '{"outputs": ...}, with "labels" when the model declares its class names.',
    )
    parser.add_argument("model", help="the served model's name (with --local: digits@production)")
    parser.add_argument("--input", "-i", default=None, help="JSON text, @FILE, or - for stdin (default: stdin)")
    parser.add_argument("--file", default=None, metavar="PATH",
                        help="send one .wav, .png, .jpg or .txt file as it is (models that declare audio, image or "
                        "text preprocessing)")  # fmt: skip
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    parser.add_argument("--local", action="store_true", help="load the model from the store instead of a server")
    parser.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto", help="with --local")
    trust_option(parser, f"{_PACKAGE_TRUST}; it matters with --local")
    store_options(parser)
    _token_options(parser)
    parser.set_defaults(handler=_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln",
        description="kiln: train, register and serve PyTorch models.",
        epilog="Run 'kiln VERB --help' for the options of one verb.",
    )
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = parser.add_subparsers(title="verbs", metavar="VERB")
    _add_info(sub)
    _add_runs(sub)
    _add_models(sub)
    _add_store(sub)
    _add_serve(sub)
    _add_predict(sub)
    for module in _VERB_MODULES:
        import_module(module).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    from .errors import KilnError

    try:
        return handler(args)
    except KilnError as error:
        print(f"kiln: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

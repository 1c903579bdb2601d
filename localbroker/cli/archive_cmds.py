"""``localbroker archive status|run`` and ``localbroker export``: thin layers over localbroker.archive.

``localbroker.archive`` is imported inside the commands, and boto3 only for an archive in S3, so
``localbroker --help`` works without the ``s3`` extra and a missing extra is reported by name.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from localbroker.cli.common import data_option, fmt_time, given, run

__all__ = ["archive", "export"]

F = TypeVar("F", bound=Callable[..., Any])
console = Console()
err_console = Console(stderr=True)


def _archive_module() -> Any:
    # Imported here so that the rest of the CLI stays light; an archive in S3 without boto3
    # raises MissingExtraError, which `run` prints as a one-line message.
    import localbroker.archive as module

    return module


def location_options(fn: F) -> F:
    """``--bucket`` or ``--directory``, ``--prefix``, ``--endpoint-url`` (else
    LOCALBROKER_ARCHIVE_* variables)."""
    for option in reversed(
        [
            click.option("--bucket", help="S3 bucket (env LOCALBROKER_ARCHIVE_BUCKET)."),
            click.option(
                "--directory",
                type=click.Path(file_okay=False, path_type=Path),
                help="A local directory instead of a bucket (env LOCALBROKER_ARCHIVE_DIRECTORY).",
            ),
            click.option(
                "--prefix", help="Key prefix (env LOCALBROKER_ARCHIVE_PREFIX, default localbroker)."
            ),
            click.option(
                "--endpoint-url",
                help="S3-compatible endpoint, e.g. MinIO (env LOCALBROKER_ARCHIVE_ENDPOINT_URL).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


@click.group()
def archive() -> None:
    """Archive status, and uploading sealed segments to S3 (or a directory) now.

    Example: localbroker archive status --data ./data
    """


@archive.command()
@data_option
@run
async def status(data: Path) -> None:
    """Segments local, archived and pending, bytes, the last upload and the last error.

    Reads local files only (no S3 access needed).

    Example: localbroker archive status --data ./data
    """
    report = await _archive_module().local_status(data)
    table = Table("", "value", title=f"Archive of {data}")
    table.add_row("local segments", f"{report.local_segments} ({report.local_bytes:,} bytes)")
    table.add_row("local start offset", str(report.local_start_offset))
    table.add_row("pending upload", f"{report.pending_segments} ({report.pending_bytes:,} bytes)")
    state = report.archive
    if state is None:
        table.add_row("archived", "never (no Archive extension has run on this directory)")
    else:
        table.add_row("location", state.location)
        table.add_row(
            "archived segments", f"{state.archived_segments} ({state.archived_bytes:,} bytes)"
        )
        first = "-" if state.first_offset is None else str(state.first_offset)
        table.add_row("archived offsets", f"{first}..{state.archived_until}")
        table.add_row("last upload", fmt_time(state.last_upload))
        error = state.last_error or "-"
        if state.last_error_at is not None:
            error = f"{fmt_time(state.last_error_at)} {error}"
        table.add_row("last error", error)
    console.print(table)


@archive.command("run")
@data_option
@location_options
@run
async def run_archive(
    data: Path,
    bucket: str | None,
    directory: Path | None,
    prefix: str | None,
    endpoint_url: str | None,
) -> None:
    """Upload every sealed segment not archived yet, then apply retention.

    For a directory no broker runs on (a running broker's Archive extension uploads by itself).

    Example: localbroker archive run --data ./data --bucket events --prefix shop
    """
    module = _archive_module()
    config = module.load_archive_config(
        **given(bucket=bucket, directory=directory, prefix=prefix, endpoint_url=endpoint_url)
    )
    with console.status("uploading..."):
        uploaded, deleted = await module.archive_now(data, config)
    size = sum(m.size_bytes for m in uploaded)
    console.print(
        f"uploaded {len(uploaded)} segments ({size:,} bytes); retention deleted {len(deleted)}"
    )


def _when(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # times on the command line are UTC


@click.command()
@click.option(
    "--topic", "topics", multiple=True, help="Topic or pattern (repeatable); default all."
)
@click.option("--since", type=click.DateTime(), help="Appended at or after (UTC).")
@click.option("--until", type=click.DateTime(), help="Appended before (UTC).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "parquet"]),
    default="jsonl",
    show_default=True,
    help="parquet needs the 'parquet' extra (pyarrow).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file, which appears only once complete (default: stdout for jsonl; required "
    "for parquet).",
)
@location_options
@run
async def export(
    topics: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    fmt: str,
    output: Path | None,
    bucket: str | None,
    directory: Path | None,
    prefix: str | None,
    endpoint_url: str | None,
) -> None:
    """Write archived events (from the archive alone) as JSON lines or Parquet, with a progress bar.

    Example: localbroker export --topic 'order.>' --since 2026-11-01 --format parquet -o orders.parquet --bucket events
    """
    module = _archive_module()
    from localbroker.archive.export import ExportFormat, export_to_file, write_jsonl

    to_stdout = output is None or str(output) == "-"
    if fmt == "parquet" and to_stdout:
        raise click.UsageError("--format parquet needs --output FILE")
    config = module.load_archive_config(
        **given(bucket=bucket, directory=directory, prefix=prefix, endpoint_url=endpoint_url)
    )
    reader = module.ArchiveReader(config)
    selected = topics or None
    since, until = _when(since), _when(until)
    manifests = reader.manifests(selected, since, until)
    progress = Progress(
        TextColumn("exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records"),
        TimeElapsedColumn(),
        console=err_console,
    )

    def events() -> Any:
        for manifest in manifests:
            yield from reader.events(selected, since, until, manifests=[manifest])
            progress.advance(task, manifest.record_count)

    with progress:
        task = progress.add_task("export", total=sum(m.record_count for m in manifests))
        if not to_stdout:
            assert output is not None
            # Written to a temporary file beside it and renamed once complete.
            count = export_to_file(events(), ExportFormat(fmt), output)
        else:
            with click.open_file("-", "wb") as out:  # standard output, as a binary stream
                count = write_jsonl(events(), out)
    err_console.print(f"exported {count} events from {len(manifests)} archived segments")

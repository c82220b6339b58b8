"""`dyembed evaluate` (metrics table with baselines) and `dyembed recommend` (top-K lists)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dyembed_cli.common import (GLOBALS, ConfigOpt, DeviceOpt, JsonFileOpt, JsonOpt, SetOpt, cfg_default, check_output, emit_json,
                                guarded, note, out, progress_bar, resolve_config, warn)

# one flag, one key, one rule (dyembed/masking.py) for evaluate and recommend
MaskSeenOpt = Annotated[str | None, typer.Option(
    "--mask-seen", show_default=cfg_default("evaluate.mask_seen"),
    help="Seen items (the user's earlier items) left out of the ranking: auto (yes unless >= evaluate.repeat_threshold "
         "of the events repeat an earlier item of their user), on or off.")]

MODEL_ORDER = ["dyembed", "frozen", "static", "history-mean", "pop", "recent-pop", "random"]


def parse_test_start(value: str | None) -> int | None:
    """Unix seconds, or an ISO date/time (UTC when no zone is given)."""
    if value is None:
        return None
    value = value.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    import datetime as dt

    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("must be unix seconds or an ISO date such as 2018-01-01", param_hint="--test-start") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp())


def parse_baselines(values: list[str] | None) -> list[str] | None:
    """`--baselines pop,static --baselines random` → ["pop", "static", "random"]; `none` → []."""
    if not values:
        return None
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return [] if names == ["none"] else names


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_lift(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.0f}%"


def render_report(report: dict[str, Any], console=None) -> None:
    """The metrics table: one row per model, per-event averages with 95 % user-bootstrap intervals."""
    from rich.table import Table

    console = console or out
    ks = report["ks"]
    counts = report["counts"]
    masking = report["masking"]
    split = report.get("split", {})
    head = f"protocol {report['protocol']}"
    if report["protocol"] == "temporal" and split.get("cut_ts") is not None:
        import datetime as dt

        head += f" (cut {dt.datetime.fromtimestamp(split['cut_ts'], dt.timezone.utc):%Y-%m-%d %H:%M} UTC)"
    head += (f" · seen items masked: {'yes' if masking['seen_masked'] else 'no'} "
             f"({masking.get('reason', masking['setting'])})"
             f" · {counts['test_events']:,} test events, {counts['test_users']:,} users"
             + (f", {counts['skipped_users']:,} users skipped (< 3 events)" if report["protocol"] == "loo" else "")
             + f" · {counts['items']:,} items, full ranking, pessimistic ties")
    table = Table(title=head, title_justify="left", show_lines=False)
    table.add_column("model", style="bold", no_wrap=True)
    metric_cols = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    for m in metric_cols:
        table.add_column(m.replace("recall", "Recall").replace("ndcg", "NDCG").replace("mrr", "MRR"), justify="right")
    kcov = ks[0]
    table.add_column(f"cov@{kcov}", justify="right")
    table.add_column(f"pop%@{kcov}", justify="right")
    primary = report["primary_metric"]
    pretty = primary.replace("ndcg", "NDCG").replace("recall", "Recall").replace("mrr", "MRR")
    table.add_column(f"{pretty} vs static", justify="right")
    table.add_column(f"{pretty} vs pop", justify="right")
    models = report["models"]
    for name in [m for m in MODEL_ORDER if m in models] + [m for m in models if m not in MODEL_ORDER]:
        res = models[name]
        cells = []
        for m in metric_cols:
            ci = res["ci95_per_event"].get(m)
            ci_txt = f"\n{ci[0]:.3f}–{ci[1]:.3f}" if ci and ci[0] is not None else ""
            cells.append(_fmt(res["per_event"][m]) + ci_txt)
        cells += [_fmt(res["coverage"][f"@{kcov}"], 3), _fmt(res["pop_percentile"][f"@{kcov}"], 1),
                  _fmt_lift(res["lift"]["static"][primary]), _fmt_lift(res["lift"]["pop"][primary])]
        table.add_row(name, *cells)
    console.print(table)
    console.print(f"per-event averages (95 % interval below each) from {report['bootstrap']['rounds']} bootstrap resamples "
                  f"of users; cov = catalogue coverage of the top-{kcov}, pop% = mean popularity percentile of the "
                  f"top-{kcov} (50 = neutral).", style="dim")
    from dyembed.evaluate.report import render_breakdown

    render_breakdown(report, console, MODEL_ORDER)
    for line in report.get("notes", []):
        console.print(f"note: {line}", style="dim")


def _render_recommendations(summary: dict[str, Any]) -> None:
    from rich.table import Table

    title = f"top-{summary['k']} · seen items " + ("excluded" if summary["exclude_seen"] else "kept")
    table = Table(title=title + f" ({summary['mask_seen']['reason']})", title_justify="left")
    for col, kw in (("user", {}), ("#", {"justify": "right"}), ("item", {}), ("score", {"justify": "right"}),
                    ("text", {"overflow": "ellipsis", "max_width": 60})):
        table.add_column(col, **kw)
    for row in summary["rows"]:
        user = row["user_id"] + (" (unknown id, cold start)" if row["unknown"] else " (cold start)" if row["cold_start"] else "")
        table.add_row(user if row["rank"] == 1 else "", str(row["rank"]), str(row["item_id"]),
                      f"{row['score']:.3f}", row["text"])
    out.print(table)


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    @guarded
    def evaluate_command(
        workdir: Annotated[Path, typer.Argument(help="Work directory (after `dyembed train`).")],
        protocol: Annotated[str | None, typer.Option("--protocol", show_default=cfg_default("evaluate.protocol"), help="loo (leave-last-out) or temporal (global cut, prequential).")] = None,
        test_fraction: Annotated[float | None, typer.Option("--test-fraction", show_default=cfg_default("evaluate.test_fraction"), help="temporal: last fraction of events that is test.")] = None,
        test_start: Annotated[str | None, typer.Option("--test-start", help="temporal: cut time, unix seconds or ISO date (overrides --test-fraction).")] = None,
        k: Annotated[list[int] | None, typer.Option("--k", min=1, show_default=cfg_default("evaluate.ks"), help="Cut-off K, a positive integer (repeatable: --k 10 --k 20).")] = None,
        mask_seen: MaskSeenOpt = None,
        baselines: Annotated[list[str] | None, typer.Option("--baselines", show_default=cfg_default("evaluate.baselines"), help="pop, recent-pop, random, history-mean, static, frozen (comma-separated or repeated; 'none').")] = None,
        json_out: JsonOpt = False,
        json_file: Annotated[Path | None, typer.Option("--json-file", help="Write the JSON report (metrics.json) to this file.")] = None,
        dump_ranks: Annotated[Path | None, typer.Option("--dump-ranks", help="Parquet of (model, user_id, item_id, ts, rank) per test event.")] = None,
        plot: Annotated[Path | None, typer.Option("--plot", help="PNG: metrics vs K, and dynamic vs static NDCG@10 over test time.")] = None,
        device: DeviceOpt = None,
        tensorboard: Annotated[Path | None, typer.Option("--tensorboard", help="TensorBoard log dir (train.tensorboard): metrics, state version and hyper-parameters under DIR/evaluate.")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Rank every test event over the full catalogue with the dynamic model and baselines; report Recall/NDCG/MRR."""
        from dyembed.evaluate.run import evaluate

        for flag, path in (("--json-file", json_file), ("--dump-ranks", dump_ranks), ("--plot", plot)):
            check_output(path, flag)

        start = parse_test_start(test_start)
        flags = {"evaluate.protocol": protocol, "evaluate.test_fraction": test_fraction, "evaluate.test_start": start,
                 "evaluate.ks": list(k) if k else None, "evaluate.mask_seen": mask_seen,
                 "evaluate.baselines": parse_baselines(baselines), "runtime.device": device,
                 "train.tensorboard": str(tensorboard) if tensorboard else None}
        cfg = resolve_config(config, set_, flags, workdir)
        bars: dict[str, Any] = {}

        def progress(model: str, done: int, total: int) -> None:
            bar = bars.get(model)
            if bar is None:
                bar = bars[model] = progress_bar(total, model, unit="ev")
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        try:
            report = evaluate(workdir, cfg, json_path=json_file, dump_ranks=dump_ranks, plot=plot, progress=progress)
        finally:
            for bar in bars.values():
                bar.close()
        if json_out:
            from dyembed.evaluate.report import jsonable

            emit_json(jsonable(report), True)
        else:
            render_report(report)
        for what, path in (("JSON report", json_file), ("ranks", dump_ranks), ("plot", plot)):
            if path is not None:
                note(f"{what} written to {path}")

    @app.command("recommend")
    @guarded
    def recommend_command(
        workdir: Annotated[Path, typer.Argument(help="Work directory (after `dyembed train`).")],
        user: Annotated[list[str] | None, typer.Option("--user", "-u", help="User id (repeatable).")] = None,
        users_file: Annotated[Path | None, typer.Option("--users-file", help="File with one user id per line.")] = None,
        k: Annotated[int, typer.Option("--k", min=1, help="Number of items per user, a positive integer.")] = 10,
        mask_seen: MaskSeenOpt = None,
        exclude_seen: Annotated[bool, typer.Option("--exclude-seen", hidden=True, help="Deprecated: --mask-seen on.")] = False,
        allow_unknown: Annotated[bool, typer.Option("--allow-unknown", help="List unknown user ids with the cold-start list (unknown = true) instead of failing with exit 3.")] = False,
        out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write all rows to FILE.parquet, .csv or .jsonl (needed for all users).")] = None,
        json_out: JsonOpt = False,
        json_file: JsonFileOpt = None,
        hash_user_ids: Annotated[str | None, typer.Option("--hash-user-ids", metavar="SALT", show_default=False, help="Required for a work dir preprocessed with --hash-user-ids: its salt (default $DYEMBED_USER_ID_SALT); --user / --users-file may then give raw ids; output shows the hashed ids only.")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Top-K items for users from the current state (no --user/--users-file: every user, streamed to --out).

        Seen items are masked by the same rule and key as evaluate (--mask-seen, evaluate.mask_seen).
        Unknown user ids: exit 3, or --allow-unknown. No TensorFlow is imported."""
        import os

        from dyembed.evaluate.recommend import recommend
        from dyembed.preprocess.pseudonym import salt_from

        if exclude_seen:
            if mask_seen not in (None, "on"):
                raise typer.BadParameter("--exclude-seen (deprecated) means --mask-seen on; give one of them",
                                         param_hint="--exclude-seen")
            warn("--exclude-seen is deprecated; use --mask-seen on (or the default auto, evaluate's rule)")
            mask_seen = "on"
        check_output(json_file, "--json-file")
        cfg = resolve_config(config, set_, {"evaluate.mask_seen": mask_seen}, workdir)
        salt = salt_from(hash_user_ids, os.environ)  # hashed user ids (owner: preprocess)
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = progress_bar(total, "recommend", unit="user")
            bar.update(done - bar.n)

        try:
            summary = recommend(workdir, cfg, user_ids=user, users_file=users_file, k=k, allow_unknown=allow_unknown,
                                out=out_file, progress=progress if out_file is not None else None, user_id_salt=salt)
        finally:
            if bar is not None:
                bar.close()
        if emit_json(summary, json_out, json_file):
            return
        for line in summary["notes"]:
            note(f"note: {line}")
        if not GLOBALS.quiet and (out_file is None or (user and summary["users"] <= 50)):
            _render_recommendations(summary)
        if out_file is not None:
            note(f"wrote {summary['rows_written']:,} rows for {summary['users']:,} users to {out_file}")

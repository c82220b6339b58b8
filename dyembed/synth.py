"""A synthetic drifting-interest world: raw logs + item texts that dyembed generates itself.

Users' interests move between topics over time, either by jumps (piecewise drift) or by sliding
from one topic to the next (gradual drift). Items belong to one topic and their titles and
descriptions are drawn from that topic's vocabulary, so a text encoder can see the topic. Item
popularity follows a power law. A few malformed rows are mixed in so the quarantine path runs.

Output (documented in data/README.md):
  events.csv   user_id,item_id,timestamp,event        (unix seconds, sorted by time)
  items.jsonl  {"item_id", "title", "description", "category"}
  world.json   the generator's settings and counts

The generator streams events in chunks, so 10 million events need only per-user arrays in memory.
Same settings and seed give byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dyembed.artefacts import atomic_group, write_json_to
from dyembed.config import SynthConfig, check_section
from dyembed.errors import ConfigError, StateError

TOPIC_WORDS: dict[str, list[str]] = {
    "cooking": "recipe kitchen garlic pasta oven bake sauce chef flavour spice dinner roast simmer dough butter herbs soup grill dessert bread".split(),
    "football": "goal striker league match keeper penalty stadium coach transfer derby midfield tackle season trophy referee kickoff squad fans cup".split(),
    "astronomy": "galaxy telescope planet orbit nebula comet star eclipse cosmos asteroid lunar solar gravity supernova meteor observatory constellation rocket astronaut".split(),
    "jazz": "saxophone trumpet swing bebop improvisation quartet groove piano bass drummer melody chord blues ballad rhythm club trio album vinyl".split(),
    "gardening": "garden seeds soil compost roses pruning tomatoes bloom shrubs greenhouse watering mulch orchard tulips harvest weeds perennial lawn hedge".split(),
    "finance": "stocks bonds portfolio dividend market investor inflation savings budget mortgage interest equity fund pension tax banking credit hedge trading".split(),
    "hiking": "trail mountain summit backpack boots forest ridge canyon campsite map compass waterfall glacier valley trek wilderness altitude tent path".split(),
    "programming": "python compiler debugging algorithm database server code software linux function variable api framework testing refactor kernel script git cloud".split(),
    "history": "empire medieval war kingdom revolution dynasty ancient archive castle treaty monarch battle colonial pharaoh roman chronicle artifact century museum".split(),
    "fashion": "dress runway designer fabric couture jacket silk trend boutique denim accessories model collection tailoring sneakers style wardrobe vintage textile".split(),
    "cars": "engine horsepower sedan racing turbo gearbox electric dealership mileage torque coupe brakes tyres convertible motorsport chassis hybrid garage pistons".split(),
    "medicine": "doctor vaccine clinic surgery patient therapy diagnosis nurse hospital symptoms treatment immune cardiology medication health disease cure pharmacy research".split(),
    "photography": "camera lens aperture shutter portrait exposure tripod landscape darkroom zoom flash pixels focus editing snapshot film studio lighting prints".split(),
    "birdwatching": "birds binoculars sparrow migration nest heron feathers songbird owl wetland eagle warbler plumage flock hawk finch wren hummingbird falcon".split(),
    "chess": "chess opening gambit endgame checkmate bishop knight rook pawn grandmaster tournament castling queen blitz strategy board tactics stalemate rating".split(),
    "cycling": "bicycle pedal peloton helmet sprint gears saddle climb velodrome touring chain wheels mountainbike commute race frame derailleur spokes breakaway".split(),
}
FILLER = "the a of and with for in on to new best guide story our your how why from into about".split()
TITLE_PATTERNS = ["The {a} {b}", "{a} and {b}", "A Guide to {a}", "{a}: {b} {c}", "Inside the {a} {b}", "Why {a} Matters"]


def _check(cfg: SynthConfig) -> None:
    for name in ("users", "items", "events", "topics"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"config key 'synth.{name}' must be at least 1")
    if cfg.topics > len(TOPIC_WORDS):
        raise ConfigError(f"config key 'synth.topics' must be at most {len(TOPIC_WORDS)}")
    if cfg.items < cfg.topics:
        raise ConfigError("config key 'synth.items' must be at least synth.topics")
    if not 0.0 <= cfg.focus <= 1.0:
        raise ConfigError("config key 'synth.focus' must be between 0 and 1")
    if cfg.span_days <= 0:
        raise ConfigError("config key 'synth.span_days' must be positive")


class World:
    """The latent structure: item topics and popularity, user activity and interest paths."""

    def __init__(self, cfg: SynthConfig):
        _check(cfg)
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.topic_names = list(TOPIC_WORDS)[: cfg.topics]
        n_items, n_users, n_topics = cfg.items, cfg.users, cfg.topics
        self.item_topic = rng.permutation(np.arange(n_items) % n_topics)
        pop_rank = rng.permutation(n_items) + 1
        self.item_weight = pop_rank.astype(np.float64) ** (-cfg.popularity_exponent)
        # per-topic cumulative popularity, for sampling an item within a topic
        self.topic_items = [np.flatnonzero(self.item_topic == t) for t in range(n_topics)]
        self.topic_cdf = [np.cumsum(self.item_weight[idx]) / self.item_weight[idx].sum() for idx in self.topic_items]
        self.global_cdf = np.cumsum(self.item_weight) / self.item_weight.sum()
        activity = rng.pareto(1.5, n_users) + 1.0
        self.user_cdf = np.cumsum(activity) / activity.sum()
        # interest path: anchor topics k_0..k_n and change points (as fractions of the time span)
        max_changes = int(cfg.drift_rate * 3 + 5)
        n_changes = np.minimum(rng.poisson(cfg.drift_rate, n_users), max_changes)
        if cfg.drift == "none":
            n_changes[:] = 0
        change_at = rng.random((n_users, max_changes))
        change_at[np.arange(max_changes)[None, :] >= n_changes[:, None]] = np.inf
        self.change_at = np.sort(change_at, axis=1)  # uniform change points, unused ones at +inf
        anchors = np.empty((n_users, max_changes + 2), dtype=np.int64)
        anchors[:, 0] = rng.integers(0, n_topics, n_users)
        for j in range(1, max_changes + 2):  # each change moves to a different topic
            step = rng.integers(1, max(n_topics, 2), n_users)
            anchors[:, j] = (anchors[:, j - 1] + step) % n_topics if n_topics > 1 else 0
        self.anchors = anchors
        if cfg.drift == "piecewise":
            self.gradual = np.zeros(n_users, dtype=bool)
        elif cfg.drift == "gradual":
            self.gradual = np.ones(n_users, dtype=bool)
        else:
            self.gradual = rng.random(n_users) < 0.5

    def interest_topic(self, users: np.ndarray, frac: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The topic each user is drawn to at time fraction `frac` (vectorised over events)."""
        change_at = self.change_at[users]
        seg = (change_at <= frac[:, None]).sum(axis=1)
        current = self.anchors[users, seg]
        following = self.anchors[users, seg + 1]
        start = np.where(seg > 0, change_at[np.arange(len(users)), np.maximum(seg - 1, 0)], 0.0)
        end = change_at[np.arange(len(users)), np.minimum(seg, change_at.shape[1] - 1)]
        end = np.where(np.isfinite(end), end, 1.0)
        # gradual drift: slide toward the next anchor across the whole segment
        progress = np.clip((frac - start) / np.maximum(end - start, 1e-9), 0.0, 1.0)
        has_next = np.isfinite(self.change_at[users, np.minimum(seg, change_at.shape[1] - 1)])
        slide = self.gradual[users] & has_next & (rng.random(len(users)) < progress)
        return np.where(slide, following, current)


def _item_texts(world: World, rng: np.random.Generator) -> list[dict[str, str]]:
    rows = []
    for item, topic in enumerate(world.item_topic):
        words = TOPIC_WORDS[world.topic_names[topic]]
        a, b, c = (words[i] for i in rng.choice(len(words), 3, replace=False))
        title = rng.choice(TITLE_PATTERNS).format(a=a.capitalize(), b=b.capitalize(), c=c)
        n_words = int(rng.integers(10, 20))
        body = [words[i] if rng.random() < 0.6 else FILLER[rng.integers(len(FILLER))] for i in rng.integers(0, len(words), n_words)]
        description = " ".join(body).capitalize() + "."
        rows.append({"item_id": f"i{item:06d}", "title": title, "description": description, "category": world.topic_names[topic]})
    return rows


BLOCK = 100_000  # events per RNG block: each block has its own stream, so output is chunking-independent


def generate(cfg: SynthConfig, out_dir: str | Path, progress: Callable[[int], None] | None = None) -> dict:
    """Write events.csv, items.jsonl and world.json for the world `cfg` describes; return counts."""
    check_section("synth", cfg)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"synth output {out_dir} exists and is not a directory")
    _check_free_space(cfg, out_dir)
    world = World(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_rng = np.random.default_rng([cfg.seed, 1])

    # the three files are replaced together (all or none): a failed run leaves no partial world
    with atomic_group(out_dir) as group:
        return _write_world(cfg, world, text_rng, group, progress)


# bytes of events.csv per event (ids, a 10-digit time, "click") and of items.jsonl per item, rounded up
_EVENT_BYTES, _ITEM_BYTES = 36, 400


def _check_free_space(cfg: SynthConfig, out_dir: Path) -> None:
    import shutil

    place = out_dir
    while not place.exists() and place != place.parent:
        place = place.parent
    need = cfg.events * _EVENT_BYTES + cfg.items * _ITEM_BYTES
    free = shutil.disk_usage(place).free
    if need > free:
        raise StateError(f"synth of {cfg.events:,} events needs about {need / 1e9:,.1f} GB in {place}, "
                         f"but only {free / 1e9:,.1f} GB are free; use fewer --events or another --out")


def _write_world(cfg: SynthConfig, world: "World", text_rng, group, progress) -> dict:
    tmp = group.path("items.jsonl")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for row in _item_texts(world, text_rng):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    span = cfg.span_days * 86_400.0
    malformed_at = set(np.linspace(0, cfg.events - 1, cfg.malformed_rows + 2, dtype=np.int64)[1:-1].tolist()) if cfg.malformed_rows else set()
    malformed_kinds = ["missing_user", "bad_timestamp", "unknown_item", "duplicate"]
    written = 0
    tmp = group.path("events.csv")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("user_id,item_id,timestamp,event\n")
        for lo in range(0, cfg.events, BLOCK):
            hi = min(lo + BLOCK, cfg.events)
            n = hi - lo
            event_rng = np.random.default_rng([cfg.seed, 2, lo // BLOCK])
            frac = (np.arange(lo, hi) + event_rng.random(n)) / cfg.events
            ts = (cfg.start_time + frac * span).astype(np.int64)
            users = np.searchsorted(world.user_cdf, event_rng.random(n), side="right")
            users = np.minimum(users, cfg.users - 1)
            topics = world.interest_topic(users, frac, event_rng)
            u = event_rng.random(n)
            focused = event_rng.random(n) < cfg.focus
            items = np.minimum(np.searchsorted(world.global_cdf, u, side="right"), cfg.items - 1)
            for t in np.unique(topics[focused]):
                sel = np.flatnonzero(focused & (topics == t))
                pos = np.minimum(np.searchsorted(world.topic_cdf[t], u[sel], side="right"), len(world.topic_items[t]) - 1)
                items[sel] = world.topic_items[t][pos]
            lines = []
            for k in range(n):
                line = f"u{users[k]:06d},i{items[k]:06d},{ts[k]},click"
                lines.append(line)
                if lo + k in malformed_at:
                    kind = malformed_kinds[sorted(malformed_at).index(lo + k) % len(malformed_kinds)]
                    if kind == "missing_user":
                        lines.append(f",i{items[k]:06d},{ts[k]},click")
                    elif kind == "bad_timestamp":
                        lines.append(f"u{users[k]:06d},i{items[k]:06d},not-a-time,click")
                    elif kind == "unknown_item":
                        lines.append(f"u{users[k]:06d},x{items[k]:06d},{ts[k]},click")
                    else:
                        lines.append(line)
            fh.write("\n".join(lines) + "\n")
            written = hi
            if progress:
                progress(written)

    summary = {
        "generator": "dyembed.synth",
        "settings": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "topics": world.topic_names,
        "events": cfg.events,
        "malformed_rows": len(malformed_at),
        "users": cfg.users,
        "items": cfg.items,
        "files": {"events": "events.csv", "items": "items.jsonl"},
    }
    write_json_to(group.path("world.json"), summary)
    return summary

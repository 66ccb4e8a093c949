"""Turns one run's measurements into docs/benchmarks.md."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from measure import Samples
from peers import RAW_READ, SATCHEL_UNVERIFIED, SATCHEL_VERIFIED

GIB = 1 << 30
MIB = 1 << 20

NOTES_START = "<!-- lead-notes:start (kept verbatim when the file is regenerated) -->"
NOTES_END = "<!-- lead-notes:end -->"
NOTES_PLACEHOLDER = (
    "**Placeholder — lead to edit:** interpretation of the misses above (which design choice"
    " sets each limit, and what is planned). Text between these markers survives re-runs."
)

SATCHEL_SAVE = "satchel.save (fsyncs itself)"
ST_SAVE = "safetensors save_file + fsync"
RAW_SAVE = "raw write + fsync"
ST_LOAD = "safetensors load_file"
HASH_REF = "xxh3-64 of the payload in RAM (1 thread)"
COPY_REF = "memcpy of the payload (np.copyto)"


@dataclass
class Memory:
    """Resident-set peak of a child process while it saved the big state."""

    label: str
    baseline: int = 0
    peak: int = 0
    state: int = 0
    error: str | None = None

    @property
    def ratio(self) -> float:
        return (self.peak - self.baseline) / self.state


@dataclass
class Results:
    command: str
    machine: dict[str, str]
    reps: int
    warm_reps: int
    big_bytes: int
    big_count: int
    small_bytes: int
    small_count: int
    one_name: str
    one_bytes: int
    sections: dict[str, dict[str, Samples]] = field(default_factory=dict)
    memory: list[Memory] = field(default_factory=list)

    def samples(self, section: str, label: str) -> Samples | None:
        found = self.sections.get(section, {}).get(label)
        return found if found is not None and found.ok else None


@dataclass(frozen=True)
class Outcome:
    target: str
    satchel: str
    reference: str
    ratio: str
    limit: str
    passed: bool | None  # None: could not be measured, or a bound that does not decide
    best: str = "—"  # the same ratio from best-of runs: how much the verdict owes to noise


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_samples(samples: Samples) -> str:
    """The median, marked when it is a lower bound (stopped run) or from a single run."""
    if samples.aborted:
        return f"≥ {fmt_time(samples.median)}"
    return fmt_time(samples.median) + (" (1 run)" if samples.note else "")


def fmt_bytes(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB // 2 else f"{nbytes / MIB:.1f} MiB"


def _sections(r: Results) -> list[tuple[str, str, str]]:
    big = f"{fmt_bytes(r.big_bytes)} transformer state ({r.big_count} fp32 tensors)"
    small = f"{r.small_count:,} tensors of 64 fp32 ({fmt_bytes(r.small_bytes)})"
    touched = (
        "then one byte of every 4 KiB page of every returned tensor is read, so lazy (mmap)"
        " loaders pay for bringing all data in, like eager ones"
    )
    cold = (
        "The file's pages are evicted (fsync, then `posix_fadvise(DONTNEED)`) before each run,"
        " after one untimed warm-up round (the VM host caches the disk image; see above)"
    )
    return [
        (
            "big_save",
            f"{big} — save + fsync",
            "Time from the call until file and directory are fsynced (peers: their save, then"
            " our fsync of file and directory; satchel fsyncs itself). The previous copy is"
            " deleted and the deletion synced, untimed, before each run; one untimed warm-up"
            " round comes first.",
        ),
        ("big_load", f"{big} — cold load", f"{cold}; the time covers the load call, {touched}."),
        (
            "big_one",
            f"{big} — read one tensor (`{r.one_name}`, {fmt_bytes(r.one_bytes)}), cold",
            f"{cold}; the time covers opening the file, getting that tensor and reading every"
            " page of it.",
        ),
        (
            "big_warm",
            f"{big} — load with the file already in the page cache",
            "Only the load call is timed; nothing is touched, so an mmap load returns lazy"
            " views. `verify=True` still reads and hashes every byte.",
        ),
        ("reference", "In-memory references (same payload)", "No disk involved."),
        ("small_save", f"{small} — save + fsync", "As for the big state."),
        (
            "small_load",
            f"{small} — cold load",
            f"{cold}; the time covers the load call, {touched}.",
        ),
    ]


def _extra_column(r: Results, section: str) -> tuple[str, Callable[[float], str]] | None:
    """A derived column where it means something: throughput for bulk I/O, cost per tensor."""
    if section in {"big_save", "big_load", "big_one", "reference"}:
        nbytes = r.one_bytes if section == "big_one" else r.big_bytes
        return "GiB/s (median)", lambda t: f"{nbytes / GIB / t:.2f}"
    if section.startswith("small_"):
        return "per tensor (median)", lambda t: f"{t / r.small_count * 1e6:.1f} µs"
    return None


def _time_table(r: Results, section: str) -> list[str]:
    extra = _extra_column(r, section)
    head = ["Call", "Median", "Best"] + ([extra[0]] if extra else [])
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    notes: list[str] = []
    for label, samples in r.sections.get(section, {}).items():
        if samples.ok:
            best = "—" if samples.aborted else fmt_time(samples.best)
            cols = [f"`{label}`", fmt_samples(samples), best]
            prefix = "≥ " if samples.aborted else ""
            cols += [prefix + extra[1](samples.median)] if extra else []
        else:
            cols = [f"`{label}`", f"failed: {samples.error}"] + [""] * (len(head) - 2)
        if samples.note is not None:
            notes.append(f"[{len(notes) + 1}] `{label}`: {samples.note}.")
            cols[0] += f" [{len(notes)}]"
        lines.append("| " + " | ".join(cols) + " |")
    return lines + (["", *notes] if notes else [])


def _memory_table(r: Results) -> list[str]:
    lines = [
        "| Save call | RSS before save | Peak RSS (VmHWM) | Peak above baseline | ÷ state size |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in r.memory:
        if m.error is not None:
            lines.append(f"| `{m.label}` | failed: {m.error} | | | |")
            continue
        lines.append(
            f"| `{m.label}` | {fmt_bytes(m.baseline)} | {fmt_bytes(m.peak)} |"
            f" {fmt_bytes(m.peak - m.baseline)} | {m.ratio:.2f}x |"
        )
    return lines


def _bounded(ratio: float, limit: float, a: Samples, b: Samples) -> tuple[str, bool | None]:
    """Ratio text and verdict; a stopped run turns the ratio into a bound that may not decide."""
    if a.aborted:  # satchel was stopped: a lower bound, decisive only above the limit
        return f"≥ {ratio:.2f}x", False if ratio > limit else None
    if b.aborted:  # the reference was stopped: an upper bound, decisive only within the limit
        return f"≤ {ratio:.2f}x", True if ratio <= limit else None
    return f"{ratio:.2f}x", ratio <= limit


def _ratio(
    r: Results, target: str, num: tuple[str, str], den: tuple[str, str], limit: float
) -> Outcome:
    a, b = r.samples(*num), r.samples(*den)
    bound = f"≤ {limit:.2f}x"
    if a is None or b is None or (a.aborted and b.aborted):
        return Outcome(target, "n/a", "n/a", "—", bound, None)
    text, passed = _bounded(a.median / b.median, limit, a, b)
    reference = f"{fmt_samples(b)} (`{den[1]}`)"
    best = "—" if a.aborted or b.aborted else f"{a.best / b.best:.2f}x"
    return Outcome(target, fmt_samples(a), reference, text, bound, passed, best)


def _warm_outcome(r: Results) -> Outcome:
    target = f"Warm mmap load of {fmt_bytes(r.big_bytes)} (`verify=False`)"
    warm = r.samples("big_warm", SATCHEL_UNVERIFIED)
    if warm is None:
        return Outcome(target, "n/a", "—", "—", "< 10 ms", None)
    passed = warm.median < 0.010
    return Outcome(target, fmt_samples(warm), "—", "—", "< 10 ms", passed, fmt_time(warm.best))


def _memory_outcome(r: Results) -> Outcome:
    target = "Peak memory while saving, above baseline ÷ state size"
    mem = next((m for m in r.memory if m.label == SATCHEL_SAVE and m.error is None), None)
    if mem is None:
        return Outcome(target, "n/a", "—", "—", "≤ 1.10x", None)
    peak = fmt_bytes(mem.peak - mem.baseline)
    return Outcome(target, peak, "—", f"{mem.ratio:.2f}x", "≤ 1.10x", mem.ratio <= 1.10)


# (target, satchel case, reference case, highest passing ratio); {big}/{small} name the states.
RATIO_TARGETS = [
    ("{big} save+fsync vs safetensors", ("big_save", SATCHEL_SAVE), ("big_save", ST_SAVE), 1.00),
    (
        "{big} save+fsync vs raw write+fsync",
        ("big_save", SATCHEL_SAVE),
        ("big_save", RAW_SAVE),
        1.15,
    ),
    (
        "{big} cold load, checksums verified, vs raw cold read",
        ("big_load", SATCHEL_VERIFIED),
        ("big_load", RAW_READ),
        1.15,
    ),
    (
        # A cached load of the big state costs no more than safetensors' load_file.
        "{big} warm load (`verify=False`) vs safetensors",
        ("big_warm", SATCHEL_UNVERIFIED),
        ("big_warm", ST_LOAD),
        1.00,
    ),
    (
        "{small}: cold load (verified) vs safetensors",
        ("small_load", SATCHEL_VERIFIED),
        ("small_load", ST_LOAD),
        0.50,
    ),
    (
        "{small}: save+fsync vs safetensors",
        ("small_save", SATCHEL_SAVE),
        ("small_save", ST_SAVE),
        0.50,
    ),
]


def outcomes(r: Results) -> list[Outcome]:
    names = {"big": fmt_bytes(r.big_bytes), "small": f"{r.small_count:,} small tensors"}
    ratios = [
        _ratio(r, target.format(**names), num, den, limit)
        for target, num, den, limit in RATIO_TARGETS
    ]
    return [*ratios[:3], _warm_outcome(r), *ratios[3:], _memory_outcome(r)]


def _verdict(o: Outcome) -> str:
    return "not measured" if o.passed is None else ("**PASS**" if o.passed else "**MISS**")


def _ratio_table(outs: list[Outcome]) -> list[str]:
    lines = [
        "| Target | satchel | Reference | Ratio | Limit | Result | Best-of ratio |",
        "|---|---:|---|---:|---:|:---:|---:|",
    ]
    for o in outs:
        cols = [o.target, o.satchel, o.reference, o.ratio, o.limit, _verdict(o), o.best]
        lines.append("| " + " | ".join(cols) + " |")
    return lines


def _median(r: Results, section: str, label: str) -> float | None:
    found = r.samples(section, label)
    return None if found is None else found.median


def _medians(r: Results, pairs: list[tuple[str, str]]) -> list[float] | None:
    """Medians of several cases, or None if any of them did not produce a number."""
    values = [_median(r, section, label) for section, label in pairs]
    return None if None in values else [v for v in values if v is not None]


def _save_facts(r: Results) -> str | None:
    got = _medians(
        r,
        [
            ("big_save", SATCHEL_SAVE),
            ("big_save", ST_SAVE),
            ("big_save", RAW_SAVE),
            ("reference", HASH_REF),
            ("reference", COPY_REF),
        ],
    )
    if got is None:
        return None
    sat, st, raw, hashed, copied = got
    return (
        f"Big save: satchel {fmt_time(sat)}, safetensors {fmt_time(st)}, raw write"
        f" {fmt_time(raw)}. Hashing the payload alone takes {fmt_time(hashed)} on one core"
        f" and copying it once {fmt_time(copied)}; whatever of that is not overlapped with the"
        f" write adds to the raw time (raw + hash = {fmt_time(raw + hashed)})."
    )


def _load_facts(r: Results) -> str | None:
    got = _medians(
        r,
        [
            ("big_load", SATCHEL_VERIFIED),
            ("big_load", SATCHEL_UNVERIFIED),
            ("big_load", RAW_READ),
            ("reference", HASH_REF),
        ],
    )
    if got is None:
        return None
    ver, unver, raw, hashed = got
    text = (
        f"Big cold load: raw read {fmt_time(raw)}, satchel verify=False {fmt_time(unver)}"
        f" (map + every page touched), verify=True {fmt_time(ver)}; the"
        f" checksum pass adds {fmt_time(ver - unver)} against {fmt_time(hashed)} for xxh3"
        " in RAM."
    )
    warm_ver = _median(r, "big_warm", SATCHEL_VERIFIED)
    if warm_ver is not None:
        text += f" With the file cached, a verified load takes {fmt_time(warm_ver)}."
    return text


def _per_tensor(r: Results, section: str, label: str) -> str:
    found = r.samples(section, label)
    if found is None:
        return "n/a"
    return ("≥ " if found.aborted else "") + f"{found.median / r.small_count * 1e6:.1f} µs"


def _small_facts(r: Results) -> str:
    return (
        f"Small tensors, per tensor: load satchel {_per_tensor(r, 'small_load', SATCHEL_VERIFIED)}"
        f" vs safetensors {_per_tensor(r, 'small_load', ST_LOAD)}; save satchel"
        f" {_per_tensor(r, 'small_save', SATCHEL_SAVE)} vs safetensors"
        f" {_per_tensor(r, 'small_save', ST_SAVE)}."
    )


def _warm_facts(r: Results) -> str | None:
    warm = _median(r, "big_warm", SATCHEL_UNVERIFIED)
    if warm is None:
        return None
    return (
        f"Warm mmap load: {fmt_time(warm)} for {r.big_count} tensors"
        f" ({warm / r.big_count * 1e6:.0f} µs per tensor)."
    )


def _limits_section(r: Results, outs: list[Outcome], notes: str) -> list[str]:
    missed = [o.target for o in outs if o.passed is False]
    summary = "Missed in this run: " + "; ".join(missed) + "." if missed else "All targets met."
    facts: list[Callable[[Results], str | None]] = [
        _save_facts,
        _load_facts,
        _warm_facts,
        _small_facts,
    ]
    lines = [summary, "", "Measured facts behind the numbers (generated):", ""]
    lines += [f"- {text}" for fact in facts if (text := fact(r)) is not None]
    return [*lines, "", NOTES_START, notes, NOTES_END]


def extract_notes(previous: str | None) -> str:
    """The hand-written block of an earlier docs/benchmarks.md, or the placeholder."""
    if previous is None:
        return NOTES_PLACEHOLDER
    found = re.search(re.escape(NOTES_START) + r"\n(.*?)\n" + re.escape(NOTES_END), previous, re.S)
    return found.group(1) if found else NOTES_PLACEHOLDER


def _machine(r: Results) -> list[str]:
    return [f"- **{key}:** {value}" for key, value in r.machine.items()]


def render(r: Results, notes: str) -> str:
    outs = outcomes(r)
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/run.py; edit only the lead-notes block below. -->",
        "",
        f"Command: `make bench` (this run: `{r.command}`).",
        f"Each number is the median of {r.reps} runs (warm mmap load: {r.warm_reps} runs)."
        " Peers run round-robin, each round starting at the next peer, so drift in disk speed"
        ' hits all alike. "Cold" means evicted from this kernel\'s page cache: this is a VM and'
        " the host caches the disk image, so the first read of a freshly written file is slow by"
        " a varying amount; saves and cold loads therefore follow one untimed warm-up round.",
        "",
        "Raw limits: the write sends the tensors' bytes, concatenated, in 64 MiB `os.write`"
        " calls, then fsyncs file and directory. The reads `preadv` into a buffer whose pages"
        " were faulted in beforehand: reading into fresh memory varied from 0.4 s to 2.7 s per"
        " GiB on this VM, so the limit measures the disk path, not the allocator. Loaders that"
        " allocate their results (`torch.load` without mmap, `np.load`) do pay that cost.",
        "",
        "## Machine",
        "",
        *_machine(r),
        "",
        "## Targets (same-run ratios, medians)",
        "",
        *_ratio_table(outs),
        "",
        "The verdict uses medians; the best-of column (best run over best run; for the warm"
        " load, the best time) shows how much a verdict could owe to disk noise.",
        "",
        "## What limits us where we miss",
        "",
        *_limits_section(r, outs, notes),
        "",
        "## Absolute times",
    ]
    for key, title, what in _sections(r):
        lines += ["", f"### {title}", "", what, "", *_time_table(r, key)]
    lines += [
        "",
        f"### Peak memory while saving the {fmt_bytes(r.big_bytes)} state",
        "",
        "Each save runs in a fresh child process. Baseline: resident set after imports and"
        " after building the state, with the high-water mark reset (`/proc/self/clear_refs`);"
        " peak: `VmHWM` after the save returned. The state itself is in the baseline.",
        "",
        *_memory_table(r),
        "",
    ]
    return "\n".join(lines)

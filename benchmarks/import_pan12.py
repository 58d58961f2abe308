"""Benchmark the PAN12 importer on a generated PAN12-shaped corpus.

Generates (untimed) an XML corpus of ``--messages`` messages shaped like the PAN12 test set
(about 13 messages per conversation, 2-3 authors each, a predator id list and a problem-2
file), then imports it through ``import_pan12`` and ``Ingestion`` in a fresh child process and
prints messages per second, elapsed seconds and peak memory.

Peak memory is the child's ``ru_maxrss`` (``getrusage(RUSAGE_SELF)``, read by the child just
before it exits): the high-water mark of resident memory of a process that did nothing but the
import, interpreter and imported libraries included (about 130 MiB of it is pandas, pyarrow and
pydantic being imported). Running the import in its own process keeps the generator's memory
out of the figure. Elapsed and CPU seconds cover Ingestion creation through ``close()``.

The text is bland, non-explicit chat (the content rule), sprinkled with e-mails, URLs,
@-handles and phone numbers so that the pseudonymiser has real work to do.

    .venv/bin/python benchmarks/import_pan12.py                 # 2,000,000 messages
    .venv/bin/python benchmarks/import_pan12.py --messages 200000 --profile
    .venv/bin/python benchmarks/import_pan12.py --no-gc-freeze  # without the CLI's gc.freeze()
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from cesagram.data.importers.pan12 import import_pan12
from cesagram.data.ingest import Ingestion
from cesagram.data.pseudonymise import Pseudonymiser

# PAN12 test set: 2.06M messages in 155k conversations (about 13 each), 219k authors.
MESSAGES_PER_CONVERSATION = 13
MESSAGES_PER_AUTHOR = 9.4
PREDATOR_CONVERSATION_SHARE = 0.02
BENCHMARK_KEY = b"benchmark-key-not-for-real-data"

_LINES = (
    "hey how are you",
    "not much, just got back from school",
    "did you finish the homework for tomorrow?",
    "lol yes finally",
    "what game are you playing tonight",
    "my cousin is visiting this weekend",
    "brb dinner",
    "ok ttyl",
    "the match was so good yesterday",
    "can you send me the notes from class",
    "i think the bus is late again",
    "that movie was boring tbh",
    "have you seen the new trailer?",
    "my phone is almost dead",
    "see you at practice",
    "haha that's funny",
    "what music do you like?",
    "i need to walk the dog",
    "it's raining here & cold <3",
    "sure, sounds good",
)
_WITH_IDENTIFIERS = (
    "mail me at {name}@example.com when you can",
    "my old page is www.{name}-site.net/home",
    "ask @{name} about the game",
    "call the shop on 555 {digits}",
    "the link is https://example.org/{name}?id={digits}",
    "score was {small} to {small2}",
)


def generate(directory: Path, messages: int, seed: int = 12) -> tuple[Path, Path, Path]:
    """Write corpus XML, predator list and problem-2 file into ``directory``; return paths."""
    rng = random.Random(seed)
    author_count = max(4, int(messages / MESSAGES_PER_AUTHOR))
    authors = [f"{rng.getrandbits(128):032x}" for _ in range(author_count)]
    predators = authors[: max(1, len(authors) // 860)]  # about 250 predators per 2M messages
    others = authors[len(predators) :]
    corpus = directory / "pan12-test-corpus.xml"
    predator_file = directory / "pan12-predators.txt"
    problem2 = directory / "pan12-problem2.txt"
    suspicious: list[str] = []

    written = 0
    with corpus.open("w", encoding="utf-8") as out:
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n<conversations>\n')
        while written < messages:
            size = min(messages - written, rng.randint(1, 2 * MESSAGES_PER_CONVERSATION - 1))
            conversation_id = f"{rng.getrandbits(128):032x}"
            speakers = rng.sample(others, rng.choice((2, 2, 3)))
            if rng.random() < PREDATOR_CONVERSATION_SHARE:
                speakers[0] = rng.choice(predators)
            out.write(f"<conversation id={quoteattr(conversation_id)}>\n")
            for line in range(1, size + 1):
                text = _text(rng)
                hour, minute = rng.randrange(24), rng.randrange(60)
                out.write(
                    f'<message line="{line}">\n<author>{rng.choice(speakers)}</author>\n'
                    f"<time>{hour:02d}:{minute:02d}</time>\n<text>{escape(text)}</text>\n"
                    "</message>\n"
                )
                if speakers[0] in predators and rng.random() < 0.2:
                    suspicious.append(f"{conversation_id}\t{line}\n")
            out.write("</conversation>\n")
            written += size
        out.write("</conversations>\n")
    predator_file.write_text("".join(f"{author}\n" for author in predators), encoding="utf-8")
    problem2.write_text("".join(suspicious), encoding="utf-8")
    return corpus, predator_file, problem2


def _text(rng: random.Random) -> str:
    if rng.random() < 0.1:
        template = rng.choice(_WITH_IDENTIFIERS)
        return template.format(
            name=f"user{rng.randrange(10_000)}",
            digits=f"{rng.randrange(10_000_000):07d}",
            small=rng.randrange(10),
            small2=rng.randrange(10),
        )
    return rng.choice(_LINES)


def run_import(
    corpus: Path, predators: Path, problem2: Path, out: Path, *, profile: bool, gc_freeze: bool
) -> None:
    """Import once in this process and print a JSON line with timings and peak RSS."""
    if gc_freeze:
        # Move everything the imports created out of the collector's sight, so that full
        # collections during the import only walk what the import itself keeps alive.
        gc.freeze()
    profiler = cProfile.Profile() if profile else None
    cpu_started = time.process_time()
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    with Ingestion(
        out,
        format="pan12",
        source="pan12",
        inputs=[corpus, predators, problem2],
        pseudonymiser=Pseudonymiser(BENCHMARK_KEY),
    ) as ingestion:
        import_pan12(corpus, predators, ingestion, suspicious_lines=problem2)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    report = ingestion.report
    # Linux reports ru_maxrss in KiB.
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "messages_read": report.messages.read,
                "messages_written": report.messages.written,
                "conversations_read": report.conversations.read,
                "elapsed_seconds": elapsed,
                "cpu_seconds": cpu,
                "peak_rss_mib": peak_mib,
            }
        )
    )


def main() -> None:
    """Generate a corpus, import it in a child process, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the import")
    parser.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="skip gc.freeze() before importing (`cesagram data import` calls it)",
    )
    parser.add_argument("--child", nargs=4, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        corpus, predators, problem2, out = args.child
        run_import(corpus, predators, problem2, out, profile=args.profile, gc_freeze=args.gc_freeze)
        return

    with tempfile.TemporaryDirectory(prefix="pan12-bench-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        corpus, predators, problem2 = generate(directory, args.messages, args.seed)
        size_mib = corpus.stat().st_size / 2**20
        print(
            f"generated {args.messages:,} messages ({size_mib:,.0f} MiB XML) "
            f"in {time.perf_counter() - started:.1f}s (not timed)",
            file=sys.stderr,
        )
        command = [sys.executable, __file__, "--child", str(corpus), str(predators)]
        command += [str(problem2), str(directory / "out")]
        command += ["--profile"] * args.profile + ["--no-gc-freeze"] * (not args.gc_freeze)
        result = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
    rate = figures["messages_read"] / figures["elapsed_seconds"]
    print(f"messages read:     {figures['messages_read']:,}")
    print(f"messages written:  {figures['messages_written']:,}")
    print(f"elapsed:           {figures['elapsed_seconds']:.1f} s")
    print(f"CPU time:          {figures['cpu_seconds']:.1f} s")
    print(f"throughput:        {rate:,.0f} messages/s")
    print(f"peak RSS (import): {figures['peak_rss_mib']:,.0f} MiB")


if __name__ == "__main__":
    main()

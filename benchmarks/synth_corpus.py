"""Benchmark the synthetic corpus generator: conversations and messages per second.

Generates ``--conversations`` conversations (every language, default settings otherwise) in
this process, after loading the phrasebooks once untimed, and prints conversations per second,
messages per second and elapsed seconds. Generation only: nothing is written to disk.

    .venv/bin/python benchmarks/synth_corpus.py                     # 10,000 conversations
    .venv/bin/python benchmarks/synth_corpus.py --conversations 2000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from cesagram.data.synth import SUPPORTED_LANGUAGES, SynthConfig, generate_corpus
from cesagram.data.synth.phrasebook import load_phrasebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print the top 20 functions")
    args = parser.parse_args()

    # Phrasebooks load once per process; keep that out of the per-conversation figure.
    for language in SUPPORTED_LANGUAGES:
        load_phrasebook(language)
    config = SynthConfig(conversations=args.conversations, seed=args.seed)

    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    messages = sum(len(conversation.messages) for conversation in generate_corpus(config))
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - start

    print(f"conversations:     {config.conversations}")
    print(f"messages:          {messages}")
    print(f"elapsed seconds:   {elapsed:.2f}")
    print(f"conversations/s:   {config.conversations / elapsed:,.0f}")
    print(f"messages/s:        {messages / elapsed:,.0f}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()

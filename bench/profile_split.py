"""Splits a system-wide perf profile of a shard move by process and by kind of work.

Usage: profile_split.py STACKS NAMES
  STACKS  `perf script -F pid,time,ip,sym,dso` output (one sample: a "PID TIME:" line, then
          its frames)
  NAMES   lines "NAME: pid PID" naming the processes (the playground's own listing)

A sample's kind is the first of KINDS whose pattern matches any frame of its stack, so the
order puts specific work before the generic layers (gRPC, openraft) that carry it. Stacks are
cut at perf's dwarf copy size, so part of the gRPC connection tasks' share is work they carry.
"""

import collections
import re
import statistics
import sys

KINDS = [
    ("building copy files (receiving leader)", r"CopyFiles::build|copy_files::"),
    ("fetching copy files (followers)", r"fetch_missing"),
    ("serving copy files", r"copy_fetch::\{impl#0\}::send"),
    ("streaming the shard (sender)", r"stream_shard"),
    ("proposing copy files (receiving driver)", r"ingest_batch"),
    ("RocksDB ingest", r"IngestExternalFile"),
    ("RocksDB compaction", r"BackgroundCompaction|CompactionJob"),
    ("RocksDB flush", r"FlushJob|BackgroundFlush|FlushMemTable"),
    ("RocksDB WAL sync", r"SyncWAL|FlushWAL"),
    ("RocksDB write", r"DBImpl::WriteImpl"),
    ("applying entries", r"state_machine::apply|ApplyBatch"),
    ("Raft log", r"log_store|LogStore"),
    ("openraft core", r"openraft::"),
    ("bench client", r"shardkv_client::"),
    ("gRPC connections, server side", r"serve_connection|hyper::server|h2::server"),
    ("gRPC connections, client side", r"h2::client|H2ClientFuture"),
    ("idle in tokio/epoll", r"park_internal|epoll_wait"),
]
KIND_PATTERNS = [(name, re.compile(pattern)) for name, pattern in KINDS]
BIN_SECS = 0.2


def samples(path):
    """Yields (pid, seconds, frames) per sample."""
    head, frames = None, []
    with open(path) as stacks:
        for line in stacks:
            if not line.strip():
                continue
            if line.startswith("\t") or line.startswith(" " * 8):
                frames.append(line.strip())
            else:
                if head is not None:
                    yield (*head, frames)
                pid, at = line.split()[:2]
                head, frames = (pid, float(at.rstrip(":"))), []
    if head is not None:
        yield (*head, frames)


def kind_of(frames):
    stack = "\n".join(frames)
    for name, pattern in KIND_PATTERNS:
        if pattern.search(stack):
            return name
    return "other"


def main(stacks_path, names_path):
    names = {}
    with open(names_path) as listing:
        for line in listing:
            match = re.match(r"(.*): pid (\d+)", line.strip())
            if match:
                names[match.group(2)] = match.group(1)
    by_process, by_kind = collections.Counter(), collections.Counter()
    # Samples and idle samples (pid 0 is the idle task) per BIN_SECS interval.
    bin_total, bin_idle = collections.Counter(), collections.Counter()
    for pid, at, frames in samples(stacks_path):
        interval = int(at / BIN_SECS)
        bin_total[interval] += 1
        if pid == "0":
            bin_idle[interval] += 1
            continue
        by_process[names.get(pid, "other processes")] += 1
        by_kind[kind_of(frames)] += 1
    total, busy = bin_total.total(), bin_total.total() - bin_idle.total()
    if busy == 0:
        sys.exit("no busy samples: was perf recording every CPU?")
    bins = [1 - bin_idle[b] / bin_total[b] for b in sorted(bin_total)]
    print(f"\n{total} samples, {busy / total:.0%} busy; busy share of {BIN_SECS:.1f} s intervals: "
          f"min {min(bins):.0%}, median {statistics.median(bins):.0%}, max {max(bins):.0%}")
    print("\nbusy samples by process")
    for name, count in by_process.most_common():
        print(f"  {count / busy:6.1%}  {name}")
    print("\nbusy samples by kind of work (first match from specific to generic)")
    for name, count in by_kind.most_common():
        print(f"  {count / busy:6.1%}  {name}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])

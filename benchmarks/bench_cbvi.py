"""Time one CBVI loss computation + backward on an AntGoal-sized batch (50 trials x 200 steps), and report the
process's peak resident memory (ru_maxrss) after building the model and after the updates.

Usage: python benchmarks/bench_cbvi.py [--repeats 5] [--num-prefixes N] [--threads N] [--mmap-threshold BYTES]

--mmap-threshold sets glibc's M_MMAP_THRESHOLD (mallopt) before torch is imported: blocks of at least that size
are then mapped and returned to the system when freed, instead of staying in the fragmented heap
(docs/benchmarks.md: less memory, slower updates). Linux with glibc only.
"""
import argparse
import ctypes
import os
import resource
import statistics
import sys
import time


def peak_rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux, as bench_milet.py reads it


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--num-prefixes", type=int, default=None, help="default: all T + 1 prefixes")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--mmap-threshold", type=int, default=None, help="glibc M_MMAP_THRESHOLD in bytes (mallopt)")
    args = ap.parse_args()
    if args.mmap_threshold is not None:
        M_MMAP_THRESHOLD = -3
        if ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, args.mmap_threshold) != 1:
            sys.exit(f"bench_cbvi.py: mallopt(M_MMAP_THRESHOLD, {args.mmap_threshold}) failed")
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from cbvi import CBVI

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    obs_dim, action_dim, T, B = 107, 8, args.length, args.trials   # AntGoal sizes
    model = CBVI(obs_dim, action_dim, num_prefixes=args.num_prefixes)
    obs, nxt = torch.randn(T, B, obs_dim), torch.randn(T, B, obs_dim)
    act, rew = torch.randn(T, B, action_dim), torch.randn(T, B)
    model_rss = peak_rss_mib()
    times = []
    for i in range(args.repeats + 1):                                # first run = warm-up
        model.zero_grad()
        start = time.perf_counter()
        model.loss(obs, act, rew, nxt)["total"].backward()
        if i:
            times.append(time.perf_counter() - start)
    print(f"CBVI loss+backward, T={T} B={B} prefixes={args.num_prefixes or T + 1} "
          f"threads={torch.get_num_threads()}: median {1e3 * statistics.median(times):.1f} ms "
          f"over {args.repeats} repeats; peak RSS {model_rss} MiB with the model and batch, "
          f"{peak_rss_mib()} MiB after the updates")


if __name__ == "__main__":
    main()

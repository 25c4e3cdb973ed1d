"""plain vs --qk trace in CPU seconds (time.process_time) and wall, 1 torch thread, alternating in one process (the wall clock is useless on a loaded shared machine).

    python benchmarks/qk_cpu_cost.py MODEL TRANSCODERS|- LENGTH REPEAT [CAP]

CAP pins --max-feature-nodes for both configurations. Without it the default cap follows the memory
budget, which at 64 tokens depends on the process's resident memory at the time, so plain and --qk
could trace graphs of different sizes. Each trace starts with the previous result freed (a kept
--qk result made the next 64-token trace's plan see 0.8 GB more resident memory and refuse cap 7500).
"""
import gc, sys, time, torch, statistics
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
torch.set_num_threads(1)
from circuits.replacement.model import ReplacementModel
from circuits.attribution.config import TraceConfig
from circuits.trace import trace_prompt
from qk_cost import prompt_of, PeakRSS
from transcoders.cpu_memory import release_freed_memory
rm = ReplacementModel.load(sys.argv[1], None if sys.argv[2] == "-" else sys.argv[2], "cpu", progress=False)
prompt = prompt_of(rm, int(sys.argv[3])); reps = int(sys.argv[4])
cap = {"max_feature_nodes": int(sys.argv[5])} if len(sys.argv) > 5 else {}
cfgs = {"plain": TraceConfig(**cap), "qk": TraceConfig(qk=True, **cap)}
for c in cfgs.values(): trace_prompt(rm, prompt, c)
cpu = {m: [] for m in cfgs}; wall = {m: [] for m in cfgs}; peak = {m: 0 for m in cfgs}
r = None
for _ in range(reps):
    for m, c in cfgs.items():
        r = None  # the last result is freed first: the memory plan's baseline is the resident memory
        gc.collect(); release_freed_memory()
        with PeakRSS() as rss:
            t0, c0 = time.perf_counter(), time.process_time()
            r = trace_prompt(rm, prompt, c)
            wall[m].append(time.perf_counter() - t0); cpu[m].append(time.process_time() - c0)
        peak[m] = max(peak[m], rss.peak)
        print(m, round(cpu[m][-1], 2), round(wall[m][-1], 2), r.graph.timing_seconds, flush=True)
p, q = statistics.median(cpu["plain"]), statistics.median(cpu["qk"])
print(f"tokens {len(rm.tokens(prompt))} edges {len(r.pruned.edges()[0])} cpu plain {p:.2f} qk {q:.2f} ratio {q/p:.2f}; wall plain {statistics.median(wall['plain']):.2f} qk {statistics.median(wall['qk']):.2f}; peak GB plain {peak['plain']/2**30:.2f} qk {peak['qk']/2**30:.2f} ratio {peak['qk']/peak['plain']:.2f}")

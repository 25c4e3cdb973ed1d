import torch, time, sys
torch.set_num_threads(1)
from tests.circuits.attribution_checks import random_transcoder
from circuits.models import load_model
from circuits.replacement.model import ReplacementModel
from circuits.attribution.config import TraceConfig
from circuits.trace import trace_prompts
from circuits.batch.datasets import world_addition
w = load_model("world-tiny", progress=False)
cfg = w.model.cfg
tc = random_transcoder(cfg.n_layers, cfg.d_model, "clt", n_features=int(sys.argv[1]), seed=11, threshold=0.5)
rm = ReplacementModel(w, tc, None, None)
prompts = [r["prompt"] for r in world_addition(40, 0)]
c = TraceConfig()
for k in (1, 4, 16, 1, 4, 16):
    t = time.perf_counter(); cpu = time.process_time()
    list(trace_prompts(rm, [(p, c) for p in prompts], k))
    print(k, round(time.perf_counter() - t, 2), round(time.process_time() - cpu, 2), flush=True)

import torch, numpy as np
import stability
from bench.stiff_suite import robertson, reference, SCALE, PROBLEMS
ref = reference("robertson")
for m in ["kvaerno5", "rodas4"]:
    with torch.no_grad():
        sol = stability.solve(robertson, torch.tensor([1.,0,0], dtype=torch.float64), [0, 0.4, 4, 40], method=m, rtol=1e-6, atol=1e-6)
    print(m, ((sol.ys[1:].numpy() - ref)/SCALE))
    with torch.no_grad():
        sol = stability.solve(robertson, torch.tensor([1.,0,0], dtype=torch.float64), [0, 40], method=m, rtol=1e-6, atol=1e-6)
    print(m, "end only", ((sol.ys[-1].numpy() - ref[-1])/SCALE), sol.stats.n_accepted)

import torch, time, sys
import stability
from stability import ImplicitOptions
torch.set_num_threads(1)
mu = torch.tensor(50.0, dtype=torch.float64, requires_grad=True)
def vdp(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x * x) * v - x + 0.1*torch.cos(t)], dim=-1)
y0 = torch.tensor([2., 0.], dtype=torch.float64, requires_grad=True)
w = torch.tensor([0.3, -0.01], dtype=torch.float64)
def loss(method, gradient, jac, per_sample=False, **kw):
    y = y0[None] if per_sample else y0
    sol = stability.solve(vdp, y, [0., 0.5, 1.0], method=method, gradient=gradient, implicit=ImplicitOptions(jacobian=jac), per_sample=per_sample, **kw)
    return (sol.ys[1:] * w).sum(), sol
for kw in [dict(step_size=0.05), dict(rtol=1e-8, atol=1e-8)]:
  for method in ["rodas4", "kvaerno5"]:
    for gradient, jac, ps in [("backprop", "dense", False), ("checkpoint", "dense", False), ("backprop", "krylov", False), ("checkpoint", "krylov", True), ("backprop", "dense", True)]:
        t0 = time.time()
        L, sol = loss(method, gradient, jac, ps, **kw)
        g = torch.autograd.grad(L, (mu, y0))
        g = torch.cat([g[0].view(1), g[1]])
        fd = []
        with torch.no_grad():
            for p in (mu, y0[0], y0[1]):
                eps = 1e-6 * max(1, abs(p.item()))
                p += eps; Lp, _ = loss(method, gradient, jac, ps, **kw)
                p -= 2*eps; Lm, _ = loss(method, gradient, jac, ps, **kw)
                p += eps
                fd.append(((Lp - Lm) / (2*eps)).item())
        fd = torch.tensor(fd, dtype=torch.float64)
        st = sol.stats[0] if ps else sol.stats
        print(kw, method, gradient, jac, ps, ((g - fd).abs()/fd.abs()).max().item(), st.n_accepted, round(time.time()-t0,1), flush=True)

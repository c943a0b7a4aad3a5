import torch, time, sys
import stability
from stability import ImplicitOptions
k = torch.tensor([0.04, 1e4, 3e7], dtype=torch.float64, requires_grad=True)
def rober(t, y):
    y1, y2, y3 = y[..., 0], y[..., 1]*1e-4, y[..., 2]
    return torch.stack([-k[0]*y1 + k[1]*y2*y3, 1e4*(k[0]*y1 - k[1]*y2*y3 - k[2]*y2*y2), k[2]*y2*y2], -1)
y0 = torch.tensor([1., 0., 0.], dtype=torch.float64, requires_grad=True)
w = torch.tensor([0.3, -1.0, 0.7], dtype=torch.float64)
def loss(method, gradient, jac, rtol=1e-8, per_sample=False):
    y = y0[None] if per_sample else y0
    sol = stability.solve(rober, y, [0., 0.3], method=method, rtol=rtol, atol=rtol, gradient=gradient, implicit=ImplicitOptions(jacobian=jac), per_sample=per_sample)
    return (sol.ys[-1] * w).sum(), sol
for method in ["rodas4", "kvaerno5"]:
    for gradient, jac, ps in [("backprop", "dense", False), ("checkpoint", "dense", False), ("backprop", "krylov", False), ("checkpoint", "dense", True), ("backprop", "krylov", True)]:
        t0 = time.time()
        L, sol = loss(method, gradient, jac, per_sample=ps)
        gk, gy = torch.autograd.grad(L, (k, y0))
        fd = []
        with torch.no_grad():
            for i in range(3):
                eps = 1e-6 * k[i].item()
                k[i] += eps; Lp, _ = loss(method, gradient, jac, per_sample=ps)
                k[i] -= 2*eps; Lm, _ = loss(method, gradient, jac, per_sample=ps)
                k[i] += eps
                fd.append(((Lp - Lm) / (2*eps)).item())
        st = sol.stats[0] if ps else sol.stats
        print(method, gradient, jac, ps, ((gk.detach() - torch.tensor(fd))/torch.tensor(fd).abs()).tolist(), st.n_accepted, time.time()-t0, flush=True)

import torch, time, dataclasses, sys
import stability
from stability import stiff_solvers, methods
mu=1e3
def vdp(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)
y0 = torch.tensor([2., 0.], dtype=torch.float64)
variant = sys.argv[1]
if variant == "nopred":
    stiff_solvers.Kvaerno5.tableau = dataclasses.replace(methods.KVAERNO5, predictor=None)
for tol in [1e-3, 1e-6]:
    t0=time.time()
    with torch.no_grad():
        sol = stability.solve(vdp, y0, [0., 3000.], method="kvaerno5", rtol=tol, atol=tol)
    st=sol.stats
    print(variant, tol, sol.ys[-1].tolist(), st.n_accepted, st.n_rejected, st.nfe, st.n_jacobians, st.n_factorizations, st.newton_iterations, st.newton_failures, time.time()-t0, flush=True)

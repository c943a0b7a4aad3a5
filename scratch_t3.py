import torch, time, numpy as np
from scipy.integrate import solve_ivp
import stability
mu=1e3
def vdp(t, y):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)
def vdp_np(t, y): return np.array([y[1], mu*(1-y[0]**2)*y[1]-y[0]])
def jac(t, y): return np.array([[0, 1], [-2*mu*y[0]*y[1]-1, mu*(1-y[0]**2)]])
for tol in [1e-3, 1e-6]:
    for meth in []:
        s = solve_ivp(vdp_np, (0,3000), [2,0], method=meth, rtol=tol, atol=tol, jac=jac)
        print(meth, tol, s.y[:,-1], s.t.size-1, s.nfev, s.njev, s.nlu)
y0 = torch.tensor([2., 0.], dtype=torch.float64)
for m in ["kvaerno5"]:
  for tol in [1e-3]:
    t0=time.time()
    with torch.no_grad():
        sol = stability.solve(vdp, y0, [0., 3000.], method=m, rtol=tol, atol=tol)
    st=sol.stats
    print(m, tol, sol.ys[-1].tolist(), st.n_accepted, st.n_rejected, st.nfe, st.n_jacobians, st.n_factorizations, st.n_linear_solves, st.newton_iterations, st.newton_failures, time.time()-t0)

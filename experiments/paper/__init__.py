"""The paper's artefacts, one command each: ``python -m experiments.paper
{fig1,table1,fig2,fig3,table2,mechanism,all} --data-dir DIR --scale {smoke,cpu,paper} --out DIR``.

One module per artefact (``plan(scale) -> Plan``, ``run(ctx, plan, command) -> written paths``), on shared
modules: ``specs`` (validated frozen configurations and their hashes), ``scales`` (what each scale trains and
measures), ``runtime`` (data, model cache, run directory, cached parts), ``measure`` (paper-protocol attacks
and the honest evaluation), ``report`` (atomic report.md / CSV / JSON / PNG), ``estimate`` (``--plan``: time
and memory before a run), ``cli`` (the command line). Cached results carry the version of the code that
made them (``storage.code_version``).
"""

from __future__ import annotations

from experiments.paper import fig1, fig2, fig3, mechanism, table1, table2

#: artefact name -> module; ``all`` runs them in this order (Table 1's models are reused by Figures 2, 3,
#: Table 2's ODE-net and the mechanism artefact, so they are trained first)
ARTEFACTS = {
    "table1": table1,
    "fig2": fig2,
    "fig3": fig3,
    "table2": table2,
    "fig1": fig1,
    "mechanism": mechanism,
}

__all__ = ["ARTEFACTS"]

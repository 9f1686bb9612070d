"""``report.html``: the run as one self-contained page a person opens (plots inline as SVG).

What it shows: the before/after table, every pass with what it rewrote and declined, per layer
MACs before and after, the width each layer kept, and, when the run compiled an artifact, the
measured latency of the artifact against PyTorch eager on the same inputs.
"""

from __future__ import annotations

import html
import io

from graphopt.report import OptimizeReport

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5em 0; } figcaption { color: #555; }
.declined { color: #8a5a00; font-size: 90%; }
"""


def render(report: OptimizeReport, latency_ms: dict[str, float] | None = None) -> str:
    """The page for ``report``; ``latency_ms`` maps contender → median ms (when compiled)."""
    parts = [
        f"<h1>graphopt: {_e(report.model)}</h1>",
        f"<p>inputs {_e(report.input_shapes)} · captured by {_e(report.capture_route)} · "
        f"{report.seconds:.1f} s</p>",
        _summary(report),
        _passes(report),
    ]
    for title, figure in _figures(report, latency_ms):
        parts.append(f"<figure>{figure}<figcaption>{_e(title)}</figcaption></figure>")
    if latency_ms is None:
        parts.append("<p>Not compiled: no latency measured.</p>")
    body = "\n".join(parts)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>graphopt report: {_e(report.model)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _summary(report: OptimizeReport) -> str:
    rows = "".join(
        f"<tr><td>{label}</td><td>{stats.params:,}</td><td>{stats.macs:,}</td></tr>"
        for label, stats in (("before", report.before), ("after", report.after))
    )
    ratios = (
        f"<tr><td>after ÷ before</td><td>{report.ratio('params'):.1%}</td>"
        f"<td>{report.ratio('macs'):.1%}</td></tr>"
    )
    return f"<h2>Before and after</h2><table><tr><th></th><th>params</th><th>MACs</th></tr>{rows}{ratios}</table>"


def _passes(report: OptimizeReport) -> str:
    rows = []
    for p in report.passes:
        error = p.verification.max_rel_error if p.verification else None
        check = f"{error:.1e}" if error is not None else ("lossy" if not p.exact else "")
        seconds = f"{p.seconds:.2f}" if p.seconds is not None else ""
        rows.append(
            f"<tr><td>{_e(p.name)}</td><td>{len(p.touched)}</td><td>{len(p.declined)}</td>"
            f"<td>{check}</td><td>{seconds}</td></tr>"
        )
        for decline in p.declined[:20]:
            rows.append(
                f"<tr class='declined'><td colspan='5'>declined {_e(decline.target)}: "
                f"{_e(decline.reason)}</td></tr>"
            )
    header = (
        "<tr><th>pass</th><th>rewritten</th><th>declined</th><th>max rel err</th><th>s</th></tr>"
    )
    return f"<h2>Passes</h2><table>{header}{''.join(rows)}</table>"


def _figures(report: OptimizeReport, latency_ms):
    layers = [layer for layer in report.layers if layer.macs_before > 0]
    if layers:
        yield (
            "MACs per layer, before and after (the largest 40 layers, in graph order)",
            _macs(layers),
        )
    changed = [
        layer
        for layer in report.layers
        if layer.width_before
        and layer.width_after is not None
        and layer.width_after != layer.width_before
    ]
    if changed:
        yield "Output channels kept per layer whose width changed", _widths(changed)
    if latency_ms:
        yield "Latency on the example inputs (median ms, interleaved rounds)", _latency(latency_ms)


def _macs(layers) -> str:
    largest = sorted(sorted(layers, key=lambda layer: -layer.macs_before)[:40], key=layers.index)
    names = [layer.name for layer in largest]
    fig, ax = _figure(len(names))
    positions = range(len(names))
    ax.barh(
        [p + 0.2 for p in positions],
        [layer.macs_before / 1e6 for layer in largest],
        0.4,
        label="before",
        color="#9ecae1",
    )
    ax.barh(
        [p - 0.2 for p in positions],
        [layer.macs_after / 1e6 for layer in largest],
        0.4,
        label="after",
        color="#1f77b4",
    )
    ax.set_yticks(list(positions), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("MMACs")
    ax.legend()
    return _svg(fig)


def _widths(layers) -> str:
    fig, ax = _figure(len(layers))
    kept = [layer.width_after / layer.width_before for layer in layers]
    ax.barh(range(len(layers)), kept, color="#2ca02c")
    ax.set_yticks(
        range(len(layers)),
        [f"{x.name} ({x.width_after}/{x.width_before})" for x in layers],
        fontsize=7,
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("fraction of output channels kept")
    return _svg(fig)


def _latency(latency_ms: dict[str, float]) -> str:
    fig, ax = _figure(len(latency_ms), per_row=0.5)
    ax.barh(range(len(latency_ms)), list(latency_ms.values()), color="#ff7f0e")
    ax.set_yticks(range(len(latency_ms)), list(latency_ms))
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    return _svg(fig)


def _figure(rows: int, per_row: float = 0.22):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(9, max(2.0, per_row * rows + 1)))


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _e(value) -> str:
    return html.escape(str(value))

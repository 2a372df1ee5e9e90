from utils.core.errors import plural

"""Text reports of a classifier's counts: the per-class accuracy table and the confusion matrix,
with class names (what `val` and `test` print)."""

MATRIX_UP_TO = 20  # classes; beyond, the most confused pairs are listed instead


def per_class_lines(names, confusion):
    """One line per class: its name, the share of its images predicted right, the counts
    (the PyTorch tutorial's "Accuracy of plane : 73 %" lines, with the counts behind them)."""
    width = max(len(name) for name in names)
    lines = []
    for name, row, correct in zip(names, confusion, (confusion[k][k] for k in range(len(names)))):
        total = sum(row)
        share = f"{100 * correct / total:5.1f} %" if total else "    - "
        lines.append(f"  {name:<{width}}  {share}  ({correct}/{total})")
    return lines


def confusion_lines(names, confusion):
    """The K x K counts with a header row and a name in front of each row."""
    width = max(max(len(name) for name in names), max(len(str(c)) for row in confusion for c in row)) + 2
    lines = [" " * width + "".join(f"{name:>{width}}" for name in names)]
    lines += [f"{names[k]:<{width}}" + "".join(f"{c:>{width}}" for c in row) for k, row in enumerate(confusion)]
    return lines


def columns(header, rows):
    """A header and rows of text cells as lines of left-aligned columns two spaces apart
    (`runs`, a sweep's summary)."""
    widths = [max(len(title), *(len(row[i]) for row in rows)) for i, title in enumerate(header)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]


def summary_line(what, count, metrics):
    """'val: 8 images  accuracy 0.8750  top-5 1.0000  log loss 0.3012'."""
    parts = [f"{what}: {plural(count, 'image')}", f"accuracy {metrics['val_accuracy']:.4f}"]
    if "val_top5" in metrics:
        parts.append(f"top-5 {metrics['val_top5']:.4f}")
    parts.append(f"log loss {metrics['val_logloss']:.4f}")
    return "  ".join(parts)


def report(what, count, names, metrics):
    """The summary line, the per-class table and the confusion matrix, as one text."""
    confusion = metrics["confusion"]
    lines = [summary_line(what, count, metrics), "accuracy per class:"] + per_class_lines(names, confusion)
    if len(names) <= MATRIX_UP_TO:
        lines += ["confusion (rows = truth, columns = predicted):"] + confusion_lines(names, confusion)
    else:  # a K x K table wider than any terminal: its largest off-diagonal cells instead
        pairs = sorted(((count, t, p) for t, row in enumerate(confusion) for p, count in enumerate(row) if t != p and count),
                       reverse=True)[:MATRIX_UP_TO]
        lines += [f"most confused (truth -> predicted: images), {len(pairs)} largest:"]
        lines += [f"  {names[t]} -> {names[p]}: {count}" for count, t, p in pairs] or ["  (none)"]
    return "\n".join(lines)

"""Amounts of money as a person reads them: one rule for the tables, the records,
the dashboard, the status line and the proxy's call lines. Standard library only:
the status line and the recorder import it."""

import math


def usd(amount: float) -> str:
    """`$1,234.57` from a dollar up, `$0.0234` from a cent up, and below a cent two
    significant digits (`$0.0072`, `$0.0007`, `$0.000022`): a call that cost a
    fraction of a cent never reads as `$0.0000`."""
    sign = "-" if amount < 0 else ""
    size = abs(amount)
    if size < 0.01:
        size = float(f"{size:.2g}")  # rounded first, so that $0.0099996 reads as a cent
    if size == 0:
        return "$0.00"
    if round(size, 4) >= 1:
        return f"{sign}${size:,.2f}"
    if size >= 0.01:
        return f"{sign}${size:.4f}"
    decimals = 1 - math.floor(math.log10(size))
    return f"{sign}${size:.{decimals}f}".rstrip("0")

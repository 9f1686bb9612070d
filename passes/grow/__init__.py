"""Function-preserving growth (Net2Net widen and deepen) and the unit-group resizing that
Net2Net shrink shares."""

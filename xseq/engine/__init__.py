"""The fast whole-sequence engine: time-major buffers, stacked gate GEMMs, hoisted input projections."""

"""One experiment's readout: extract the data, analyse it, decide, and record the results."""

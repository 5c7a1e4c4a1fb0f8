"""Time-bucketed stats in the Trifle::Stats layout: granularities, buffer, drivers, rules, series."""

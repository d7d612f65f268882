"""Engine: manifest, ledger, mapping, limits, replay (the march), extract, verify. Knows sources,
targets and stores only through their Protocols (runner.engine.protocols, runner.files.stores)."""

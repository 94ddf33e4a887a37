"""The analyses built on the engine: evaluation, ablation, head types, the circuit (discovery,
faithfulness, completeness, minimality, overlap), function vectors, training dynamics, bridge
parity, and the paper's released path-patching scores."""

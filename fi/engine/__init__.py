"""Running models: loading any checkpoint through TransformerLens' TransformerBridge, the
intervention value and its hooks, the patching engine (run cache, route, activation / path /
attribution patching), readout through the compared tokens' unembedding, answer tokens, clamps;
and the plain reference loops the engine is tested against."""

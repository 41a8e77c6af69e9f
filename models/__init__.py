"""Model loading, shared by training (`tasks`) and serving: base models by id, their
fingerprints, and the model input every task feeds them."""

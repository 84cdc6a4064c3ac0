"""The parts of the IC-Light fc engine: model folder, weights, prompts, images and sampling."""

"""Training runs behind `kobjectives train`, one per objective."""


# recipe `objective` -> train(recipe, out_dir, data, tfds, data_dir, strategy, log)
RUNNERS = {"mlm": mlm.train}
RUNNERS["cpc"] = cpc.train
RUNNERS["simcse"] = simcse.train

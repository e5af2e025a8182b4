

def test_the_data_set_spectra_of_a_run_are_its_own(monkeypatch):
    """records() reuses the data set's spectra across the runs on one data set object, never across two."""
    runs = [r for r in Study.of({**DIGITS, "spectra": True}).runs() if r.method == "lotta"][:2]
    d = runs[0].data()
    expected_rows, expected_inputs = sweep_module.dataset_rows(d, d.X_train[:sweep_module.SPECTRA_ROWS])
    for run in runs:
        history = sweep_module.records(run, build_model(run, d), d)[1]["dataset"]
        assert history == {"rows": expected_rows, "inputs": expected_inputs.tolist()}
    other = Run(**{**runs[0].__dict__, "dataset": PLANTED["dataset"], "arch": {"name": "mlp", "hidden": [8]}})
    d2 = other.data()
    rows2 = sweep_module.records(other, build_model(other, d2), d2)[1]["dataset"]["rows"]
    assert rows2 == sweep_module.dataset_rows(d2, d2.X_train[:sweep_module.SPECTRA_ROWS])[0] != expected_rows

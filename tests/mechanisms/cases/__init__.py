"""Contract cases, one module per mechanism family: each defines `CASES`, a list of zero-argument
factories returning a `ContractCase`. `tests/mechanisms/test_contract.py` runs the shared contract on
all of them and fails if a registered family has no case."""

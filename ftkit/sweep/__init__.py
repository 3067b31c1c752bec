"""`ftkit sweep`: hyperparameter search on Optuna that chooses on the validation split only."""

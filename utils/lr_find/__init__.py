"""`python main.py lr-find`: the learning-rate range test (Smith 2017, "Cyclical Learning Rates
for Training Neural Networks", section 3.3; fastai's lr_find): train a fresh copy of the run's
model for a few hundred steps while the lr grows exponentially, and suggest the lr where the
smoothed loss falls fastest. Nothing of any run is loaded into or written over."""

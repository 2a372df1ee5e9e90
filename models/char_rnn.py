"""CharRNN: the character-level language model of the book's chapter 9 ("AI poet").

Embedding -> a stacked LSTM -> a linear layer over the vocabulary, predicting each next
character. The book's sizes are the defaults (embedding 128, hidden 256, 2 layers). Inputs
are batch-first (N x T token indices); the LSTM state can be carried from call to call, which
is how `generate` feeds one character at a time.
"""
from torch import nn

from models.basic_module import BasicModule
from utils.core.registry import MODELS


@MODELS.register()
class CharRNN(BasicModule):
    """Next-character logits (N x T x vocab_size) and the LSTM state after the last one."""

    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, num_layers=2, dropout=0.0):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, embedding_dim)
        # dropout between LSTM layers only (PyTorch's rule); 0 = the book's model
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.linear = nn.Linear(hidden_dim, vocab_size)

    def forward(self, tokens, state=None):
        output, state = self.lstm(self.embeddings(tokens), state)
        return self.linear(output), state

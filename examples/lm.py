"""The textbook character LSTM language model in plain PyTorch, trained for a minute on any UTF-8 text
(here the fortune sample bundled with the models). Run from the repository's root with the train extra;
writes lm.pt (a state dict) and vocab.json (its {character: id} map) for `rnnserve import lm`."""
import json, time, torch
from torch import nn

text = open("models/fortunes/eval_sample.txt", encoding="utf-8").read()
chars = sorted(set(text))
stoi = {ch: i for i, ch in enumerate(chars)}
data = torch.tensor([stoi[ch] for ch in text])

class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab_size, embed_dim=64, hidden_dim=256):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x, hidden=None):
        out, hidden = self.lstm(self.embedding(x), hidden)
        return self.fc(out), hidden

model = LSTMLanguageModel(len(chars))
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
end = time.time() + 60
while time.time() < end:
    starts = torch.randint(0, len(data) - 101, (32,))
    batch = torch.stack([data[s:s + 101] for s in starts])
    logits, _ = model(batch[:, :-1])
    loss = nn.functional.cross_entropy(logits.reshape(-1, len(chars)), batch[:, 1:].reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step()
torch.save(model.state_dict(), "lm.pt")
json.dump(stoi, open("vocab.json", "w"))
torch.onnx.export(model.eval(), (batch[:1, :-1],), "lm.onnx", verbose=False)  # a plain export: no state in

#!/usr/bin/python3
"""Mean val loss by position bucket in 2048-token windows (does the model use long context?).
Usage (from tools/train): position_loss.py [CKPT]"""
import sys, numpy as np, torch
sys.path.insert(0, '.')
from model import load_checkpoint
torch.set_num_threads(2)
m, _ = load_checkpoint(sys.argv[1] if len(sys.argv) > 1 else 'work/run/ckpt.pt'); m.eval()
s = np.fromfile('work/tok/val.bin', dtype=np.uint16)
L = 2048; tot = np.zeros(L); n = 0
with torch.no_grad():
    for st in range(0, len(s) - L - 1, L):
        w = torch.from_numpy(s[st:st+L+1].astype(np.int64))[None]
        lg = m(w[:, :-1])[0]
        tot += torch.nn.functional.cross_entropy(lg, w[0, 1:], reduction='none').numpy(); n += 1
b = [(0,16),(16,64),(64,256),(256,512),(512,1024),(1024,2048)]
print('windows', n, ' '.join('%d-%d: %.3f' % (a, c, tot[a:c].mean()/n) for a, c in b))

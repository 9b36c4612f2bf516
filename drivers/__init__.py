"""Gate hardware behind small interfaces, each with a real backend and a simulated peer.

Imports nothing of ours. Hardware libraries (RPi.GPIO, smbus2's bus open,
cv2 capture, pyzbar) are imported inside the real backends only, so every
module imports on a laptop and in CI.
"""

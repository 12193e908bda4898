package http2

// maxWindow is the largest flow-control window RFC 9113 allows (2^31-1).
const maxWindow = 1<<31 - 1

// defaultWindow is the initial window every peer starts with before
// SETTINGS say otherwise (RFC 9113 section 6.9.2).
const defaultWindow = 65535

// sendWindow is what the peer lets us send. It is signed: a SETTINGS change
// of SETTINGS_INITIAL_WINDOW_SIZE can drive a stream's window negative.
type sendWindow int64

// add grows the window by n and reports false when that would pass 2^31-1,
// a FLOW_CONTROL_ERROR.
func (w *sendWindow) add(n int64) bool {
	if int64(*w)+n > maxWindow {
		return false
	}
	*w += sendWindow(n)
	return true
}

// recvWindow tracks what the peer may still send us on a stream or the
// connection, and the bytes the handler consumed that we have not yet
// given back with WINDOW_UPDATE. Credit is returned as data is consumed,
// not as it arrives, so a slow reader holds the peer back.
type recvWindow struct {
	avail   int64 // bytes the peer may send before we announce more
	unacked int64 // consumed bytes not yet announced
	size    int64 // the window we advertise; updates are batched at half
}

func (w *recvWindow) init(size int64) { *w = recvWindow{avail: size, size: size} }

// take accounts for n received bytes; false means the peer overran the
// window, a FLOW_CONTROL_ERROR.
func (w *recvWindow) take(n int64) bool {
	if n > w.avail {
		return false
	}
	w.avail -= n
	return true
}

// consume records n bytes that left the window (read by the handler, or
// dropped) and returns the increment to announce now, or 0 while the
// unannounced credit is below half the window: one WINDOW_UPDATE per half
// window keeps the frame count low without stalling the sender.
func (w *recvWindow) consume(n int64) int64 {
	w.unacked += n
	if w.unacked < w.size/2 || w.unacked == 0 {
		return 0
	}
	inc := w.unacked
	w.unacked = 0
	w.avail += inc
	return inc
}

// resize applies a change of the advertised window size (our SETTINGS
// were acknowledged): what the peer may send moves by the difference.
func (w *recvWindow) resize(size int64) {
	w.avail += size - w.size
	w.size = size
}

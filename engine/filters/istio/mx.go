package istio

import (
	"encoding/binary"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// The in-band metadata exchange of istio/proxy's TCP filter: a header of
// two big-endian uint32 (a magic number and the size of what follows),
// then a google.protobuf.Any holding a Struct with the sender's metadata
// under "x-envoy-peer-metadata" and its node ID under
// "x-envoy-peer-metadata-id".
const (
	mxMagic      = 0x3D230467
	mxHeaderSize = 8
	// mxMaxData bounds the metadata a peer may send before its bytes.
	mxMaxData   = 64 << 10
	structURL   = "type.googleapis.com/google.protobuf.Struct"
	mxStateKey  = "istio.peer_metadata"
	mxNamespace = "istio.metadata_exchange"
)

// MetadataExchange compiles
// envoy.tcp.metadataexchange.config.MetadataExchange, the network
// istio.metadata_exchange filter, for the server side of a TCP proxy
// chain (Istio's inbound TCP chains): when the client negotiated the
// exchange's ALPN protocol ("istio-peer-exchange"), this proxy's metadata
// is written to it first, and the client's, which starts its bytes, is
// read and removed before they reach the application. The peer is left
// in the connection's dynamic metadata (namespace
// "istio.metadata_exchange", key "istio.peer_metadata", a Workload). A
// connection without that ALPN protocol, or whose first bytes are not an
// exchange header, passes untouched, as in Envoy.
//
// The client side (Istio's upstream cluster filter) is not run: the
// translator withdraws "istio-peer-exchange" from upstream ALPN instead.
type MetadataExchange struct{}

type mxConfig struct {
	protocol string
	hello    []byte // this proxy's header and metadata
}

// CompileNetworkFilter implements stream.NetworkCompiler.
func (MetadataExchange) CompileNetworkFilter(cfg any) (stream.NetworkFactory, error) {
	u, err := undecoded(cfg, config.TypeIstioMetadataExchange)
	if err != nil {
		return nil, err
	}
	mc := &mxConfig{protocol: "istio-peer-exchange"}
	if u.Fields != nil {
		if p, ok := u.Fields["protocol"].(string); ok && p != "" {
			mc.protocol = p
		}
	} else {
		err := walk(u.Value, func(num protowire.Number, _ uint64, b []byte, isBytes bool) error {
			if num == 1 && isBytes && len(b) > 0 {
				mc.protocol = string(b)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("istio: metadata exchange: %w", err)
		}
	}
	if mc.hello, err = mxHello(localWorkload(u.Node)); err != nil {
		return nil, fmt.Errorf("istio: metadata exchange: %w", err)
	}
	return stream.NetworkFactoryFunc(func(cb stream.NetworkCallbacks) stream.NetworkFilter {
		return &mxFilter{c: mc, cb: cb}
	}), nil
}

// mxHello is the exchange message of w.
func mxHello(w Workload) ([]byte, error) {
	md, err := w.marshal()
	if err != nil {
		return nil, err
	}
	mdStruct := &structpb.Struct{}
	if err := proto.Unmarshal(md, mdStruct); err != nil {
		return nil, err
	}
	outer := &structpb.Struct{Fields: map[string]*structpb.Value{
		headerPeerMetadata: structpb.NewStructValue(mdStruct),
	}}
	if w.ID != "" {
		outer.Fields[headerPeerMetadataID] = structpb.NewStringValue(w.ID)
	}
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(outer)
	if err != nil {
		return nil, err
	}
	a, err := proto.Marshal(&anypb.Any{TypeUrl: structURL, Value: v})
	if err != nil {
		return nil, err
	}
	out := make([]byte, mxHeaderSize, mxHeaderSize+len(a))
	binary.BigEndian.PutUint32(out, mxMagic)
	binary.BigEndian.PutUint32(out[4:], uint32(len(a)))
	return append(out, a...), nil
}

type mxFilter struct {
	stream.NetworkPassThrough
	c     *mxConfig
	cb    stream.NetworkCallbacks
	state uint8
}

const (
	mxStart = iota
	mxReading
	mxDone
)

func (f *mxFilter) OnDownstreamData(b *stream.Buffer, end bool) stream.NetworkStatus {
	switch f.state {
	case mxDone:
		return stream.NetworkContinue
	case mxStart:
		st := f.cb.TLS()
		if st == nil || st.NegotiatedProtocol != f.c.protocol {
			f.state = mxDone
			return stream.NetworkContinue
		}
		// Like Envoy's server side, answer on the first bytes.
		if err := f.cb.WriteDownstream(f.c.hello); err != nil {
			f.state = mxDone
			return stream.NetworkContinue
		}
		f.state = mxReading
	}
	p := b.Bytes()
	if len(p) < mxHeaderSize {
		return f.more(end)
	}
	if binary.BigEndian.Uint32(p) != mxMagic {
		f.state = mxDone // not an exchange: the bytes are the application's
		return stream.NetworkContinue
	}
	n := binary.BigEndian.Uint32(p[4:])
	if n > mxMaxData {
		f.cb.Logger().Warn("istio: metadata exchange: peer metadata too large; closing", "size", n)
		f.cb.Close()
		return stream.NetworkStopIteration
	}
	if len(p) < mxHeaderSize+int(n) {
		return f.more(end)
	}
	f.record(p[mxHeaderSize : mxHeaderSize+n])
	b.Set(p[mxHeaderSize+n:])
	f.state = mxDone
	return stream.NetworkContinue
}

// more holds the bytes until the exchange is complete.
func (f *mxFilter) more(end bool) stream.NetworkStatus {
	if end {
		f.state = mxDone
		return stream.NetworkContinue
	}
	return stream.NetworkStopIteration
}

// record keeps the peer's metadata; one that does not decode is dropped,
// as Envoy does.
func (f *mxFilter) record(msg []byte) {
	a := &anypb.Any{}
	if proto.Unmarshal(msg, a) != nil {
		return
	}
	st := &structpb.Struct{}
	if proto.Unmarshal(a.GetValue(), st) != nil {
		return
	}
	fields := st.AsMap()
	md, _ := fields[headerPeerMetadata].(map[string]any)
	w := workloadOf(md)
	w.ID, _ = fields[headerPeerMetadataID].(string)
	f.cb.DynamicMetadata().Set(mxNamespace, mxStateKey, w)
}

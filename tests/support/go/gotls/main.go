// A Go HTTPS server and client for the crypto/tls uprobe tests (tests/integration/test_ebpf_gotls.py).
// Standard library only (built with GOPROXY=off, no modules): the server negotiates HTTP/2 by ALPN
// like any net/http TLS server; the client speaks HTTP/2 (-proto 2) or HTTP/1.1 only (-proto 1).
//
//	gotls server CERT KEY          prints its port, serves until killed
//	gotls client -proto 2|1 URL... one connection, the URLs in order; prints "STATUS PROTO" per URL
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
)

func handler(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/ok":
		io.WriteString(w, "ok")
	case r.URL.Path == "/echo":
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d", len(body))
	case r.URL.Path == "/boom":
		http.Error(w, "boom", http.StatusInternalServerError)
	case strings.HasPrefix(r.URL.Path, "/big/"):
		var n int
		fmt.Sscanf(r.URL.Path, "/big/%d", &n)
		w.Header().Set("Content-Length", strconv.Itoa(n)) // not chunked: the body size is n in both versions
		w.Write([]byte(strings.Repeat("x", n)))
	default:
		http.NotFound(w, r)
	}
}

func server(cert, key string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	panic((&http.Server{Handler: http.HandlerFunc(handler)}).ServeTLS(ln, cert, key))
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	proto := fs.Int("proto", 2, "2: HTTP/2 by ALPN, 1: HTTP/1.1 only")
	wait := fs.Bool("wait", false, "print ready and wait for a line on stdin before the requests")
	fs.Parse(args)
	transport := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxConnsPerHost: 1}
	if *proto == 2 {
		transport.ForceAttemptHTTP2 = true
	} else {
		transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	if *wait {
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	c := &http.Client{Transport: transport}
	for _, url := range fs.Args() {
		var resp *http.Response
		var err error
		if strings.HasSuffix(url, "/echo") {
			resp, err = c.Post(url, "text/plain", strings.NewReader("abcdef"))
		} else {
			resp, err = c.Get(url)
		}
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, resp.Proto)
	}
	// Close the connection as a well-behaved client does: an exit alone closes it without close(2),
	// which the syscall capture never sees (the last response would end only when it goes idle).
	transport.CloseIdleConnections()
}

func main() {
	switch os.Args[1] {
	case "server":
		server(os.Args[2], os.Args[3])
	case "client":
		client(os.Args[2:])
	}
}

// Command shop is the demo's service, as a team's repository holds it: a
// Go main package that `tunnel deploy --build` and `tunnel canary start
// --build` turn into an image. The demo edits the two constants below to
// make a new release.
package main

import (
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"os"
)

const (
	version  = "v1"
	failRate = 0.0 // the share of requests answered 500
)

func main() {
	host, _ := os.Hostname()
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {})
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if rand.Float64() < failRate {
			http.Error(w, "shop "+version+": out of stock", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "shop %s from %s: %s\n", version, host, r.URL.Path)
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}

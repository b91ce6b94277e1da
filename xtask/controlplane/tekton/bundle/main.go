// Command bundle publishes Tekton bundles (OCI images with one Tekton resource per layer, the
// format the bundles resolver reads) to a registry with go-containerregistry, and prints each
// pushed reference pinned by digest.
//
//	bundle REF FILE [REF FILE ...]
//
// FILE is a YAML file of one or more Tekton resources (Pipeline, Task); REF is where the bundle
// goes (127.0.0.1:5000/workflows/canary:v1). Each line of output is REF@sha256:....
package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"sigs.k8s.io/yaml"
)

// The layer annotations the bundles resolver requires.
const (
	annotationKind       = "dev.tekton.image.kind"
	annotationName       = "dev.tekton.image.name"
	annotationAPIVersion = "dev.tekton.image.apiVersion"
)

type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

func main() {
	args := os.Args[1:]
	if len(args) == 0 || len(args)%2 != 0 {
		fmt.Fprintln(os.Stderr, "usage: bundle REF FILE [REF FILE ...]")
		os.Exit(2)
	}
	for i := 0; i < len(args); i += 2 {
		pinned, err := publish(args[i], args[i+1])
		if err != nil {
			fmt.Fprintf(os.Stderr, "bundle %s from %s: %v\n", args[i], args[i+1], err)
			os.Exit(1)
		}
		fmt.Println(pinned)
	}
}

func publish(ref, file string) (string, error) {
	tag, err := name.ParseReference(ref)
	if err != nil {
		return "", err
	}
	text, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, doc := range strings.Split(string(text), "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var obj object
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return "", err
		}
		if obj.Kind == "" || obj.Metadata.Name == "" {
			continue // a document of comments only
		}
		data, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return "", err
		}
		layer, err := tarLayer(obj.Metadata.Name, data)
		if err != nil {
			return "", err
		}
		version := obj.APIVersion[strings.LastIndex(obj.APIVersion, "/")+1:]
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     layer,
			MediaType: types.OCILayer,
			Annotations: map[string]string{
				annotationKind:       strings.ToLower(obj.Kind),
				annotationName:       obj.Metadata.Name,
				annotationAPIVersion: version,
			},
		})
		if err != nil {
			return "", err
		}
	}
	if err := remote.Write(tag, img); err != nil {
		return "", err
	}
	digest, err := img.Digest()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s@%s", tag.Context().Name(), digest), nil
}

// tarLayer is a layer holding one file, the resource: the layout the resolver reads.
func tarLayer(name string, data []byte) (v1.Layer, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	if err := w.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	content := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(content)), nil
	})
}

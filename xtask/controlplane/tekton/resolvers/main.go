// Command resolvers runs Tekton's bundles resolver (the only resolver the operator's
// PipelineRuns use) as the released tekton-pipelines-resolvers does, for the local test cluster:
// knative's default probe server (fixed port 8080 on every interface) is turned off and a probe
// server listens on 127.0.0.1:$PROBES_PORT instead, so that it can run beside the controller
// and beside other local clusters. Flags and environment are those of the released resolvers.
package main

import (
	"github.com/tektoncd/pipeline/pkg/apis/resolution/v1alpha1"
	"github.com/tektoncd/pipeline/pkg/remoteresolution/resolver/bundle"
	"github.com/tektoncd/pipeline/pkg/remoteresolution/resolver/framework"
	"k8s.io/client-go/rest"
	filteredinformerfactory "knative.dev/pkg/client/injection/kube/informers/factory/filtered"
	"knative.dev/pkg/injection"
	"knative.dev/pkg/injection/sharedmain"
	"knative.dev/pkg/signals"

	"we-operator.local/controlplane/tekton/internal/probes"
)

func main() {
	cfg := injection.ParseAndGetRESTConfigOrDie() // parses the flags
	cfg.QPS = 2 * rest.DefaultQPS
	cfg.Burst = rest.DefaultBurst

	probes.Serve()

	ctx := sharedmain.WithHealthProbesDisabled(signals.NewContext())
	ctx = filteredinformerfactory.WithSelectors(ctx, v1alpha1.ManagedByLabelKey)
	sharedmain.MainWithConfig(ctx, "controller", cfg, framework.NewController(ctx, &bundle.Resolver{}))
}

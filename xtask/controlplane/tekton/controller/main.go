// Command controller runs Tekton Pipelines' reconcilers (PipelineRun, TaskRun,
// ResolutionRequest) as the released tekton-pipelines-controller does, for the local test
// cluster, where every component is a process on the same host: knative's default probe server
// (fixed port 8080 on every interface) is turned off and a probe server listens on
// 127.0.0.1:$PROBES_PORT instead, so that several such processes, and several local clusters,
// can run side by side. Flags and environment are those of the released controller.
package main

import (
	"flag"
	"log"

	"github.com/tektoncd/pipeline/pkg/apis/pipeline"
	"github.com/tektoncd/pipeline/pkg/apis/pipeline/v1beta1"
	"github.com/tektoncd/pipeline/pkg/reconciler/pipelinerun"
	"github.com/tektoncd/pipeline/pkg/reconciler/resolutionrequest"
	"github.com/tektoncd/pipeline/pkg/reconciler/taskrun"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	filteredinformerfactory "knative.dev/pkg/client/injection/kube/informers/factory/filtered"
	"knative.dev/pkg/controller"
	"knative.dev/pkg/injection"
	"knative.dev/pkg/injection/sharedmain"
	"knative.dev/pkg/signals"

	"we-operator.local/controlplane/tekton/internal/probes"
)

func main() {
	opts := &pipeline.Options{}
	images := &opts.Images
	namespace := flag.String("namespace", "", "the only namespace to reconcile (default: all)")
	flag.StringVar(&images.EntrypointImage, "entrypoint-image", "", "image of the entrypoint binary")
	flag.StringVar(&images.SidecarLogResultsImage, "sidecarlogresults-image", "", "image of the sidecar log results binary")
	flag.StringVar(&images.NopImage, "nop-image", "", "image that stops sidecars")
	flag.StringVar(&images.ShellImage, "shell-image", "", "image with a shell")
	flag.StringVar(&images.ShellImageWin, "shell-image-win", "", "image with a Windows shell")
	flag.StringVar(&images.WorkingDirInitImage, "workingdirinit-image", "", "image of the working dir init binary")
	flag.DurationVar(&opts.ResyncPeriod, "resync-period", controller.DefaultResyncPeriod, "period of full resyncs")

	cfg := injection.ParseAndGetRESTConfigOrDie() // parses the flags
	if err := images.Validate(); err != nil {
		log.Fatal(err)
	}
	// Three reconcilers share the client: the released controller's rate limits.
	cfg.QPS = 2 * 2 * rest.DefaultQPS
	cfg.Burst = 2 * rest.DefaultBurst

	probes.Serve()
	ctx := injection.WithNamespaceScope(signals.NewContext(), *namespace)
	ctx = sharedmain.WithHealthProbesDisabled(ctx)
	ctx = filteredinformerfactory.WithSelectors(ctx, v1beta1.ManagedByLabelKey)
	ctx = controller.WithResyncPeriod(ctx, opts.ResyncPeriod)
	sharedmain.MainWithConfig(ctx, "tekton-pipelines-controller", cfg,
		taskrun.NewController(opts, clock.RealClock{}),
		pipelinerun.NewController(opts, clock.RealClock{}),
		resolutionrequest.NewController(clock.RealClock{}),
	)
}

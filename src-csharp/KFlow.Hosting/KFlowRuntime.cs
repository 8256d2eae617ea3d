// The workflows a host runs, registered as a singleton so an application can read their progress.
using System.Collections.Generic;
using System.Linq;

namespace KFlow.Hosting;

/// <summary>The workflows started by this host's KFlow hosted services (a singleton service).</summary>
public sealed class KFlowRuntime
{
    private readonly object _gate = new();
    private readonly List<RunningWorkflow> _running = new();

    /// <summary>The workflows started so far, in start order.</summary>
    public IReadOnlyList<RunningWorkflow> Workflows
    {
        get
        {
            lock (_gate) return _running.ToArray();
        }
    }

    /// <summary>The running workflow named <paramref name="name"/>, or null when it has not started.</summary>
    public RunningWorkflow? Find(string name)
    {
        lock (_gate) return _running.FirstOrDefault(w => w.Name == name);
    }

    internal void Add(RunningWorkflow workflow)
    {
        lock (_gate) _running.Add(workflow);
    }
}

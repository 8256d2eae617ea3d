// Live progress: on a terminal, three lines redrawn in place with a progress bar; otherwise one plain
// line per second (logs, CI, the tests).
using System;
using System.Linq;
using KFlow.Hosting;

namespace KFlowDemo;

internal sealed class ProgressView(long total, bool plain)
{
    private int _drawn;
    private long _lastConsumed;
    private TimeSpan _lastAt;
    private double _rate;

    public TimeSpan Interval => plain ? TimeSpan.FromSeconds(1) : TimeSpan.FromMilliseconds(250);

    public void Show(WorkflowProgress p, long[] committed, long[] ends, TimeSpan elapsed, bool final = false)
    {
        var dt = (elapsed - _lastAt).TotalSeconds;
        if (dt > 0.05)
        {
            _rate = (p.Consumed - _lastConsumed) / dt;
            _lastConsumed = p.Consumed;
            _lastAt = elapsed;
        }

        var committedTotal = committed.Sum();
        var lag = ends.Sum() - committedTotal;
        var perPartition = string.Join(" ", committed.Select((c, i) => plain ? $"p{i}:{c}" : $"p{i}:{c:N0}"));
        if (plain)
        {
            Console.WriteLine(
                $"[{elapsed.TotalSeconds,5:F1}s] consumed={p.Consumed} committed={committedTotal} rows={p.Written} " +
                $"rate={_rate:F0}/s lag={lag} in_flight={p.InFlight} restarts={p.Restarts} committed_per_partition=[{perPartition}]");
            return;
        }

        var fraction = total > 0 ? Math.Min(1.0, (double)committedTotal / total) : 0;
        const int width = 30;
        var filled = (int)Math.Round(fraction * width);
        var lines = new[]
        {
            $"[{new string('#', filled)}{new string('-', width - filled)}] {fraction,4:P0} committed  " +
            $"consumed {p.Consumed:N0}{(total > 0 ? "/" + total.ToString("N0") : "")}  rows {p.Written:N0}  {_rate:N0} msg/s",
            $"committed per partition  {perPartition}",
            $"lag {lag:N0}  in flight {p.InFlight:N0}  pauses {p.Pauses}  failures {p.Failures}  restarts {p.Restarts}  " +
            $"{elapsed.TotalSeconds:F1} s{(final ? "  (stopped)" : "")}",
        };
        if (_drawn > 0) Console.Write($"\u001b[{_drawn}A");
        foreach (var line in lines) Console.WriteLine("\r" + line + "\u001b[K");
        _drawn = lines.Length;
    }
}

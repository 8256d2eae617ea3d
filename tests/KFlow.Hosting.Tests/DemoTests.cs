// Tests of src-csharp/KFlow.Demo: the demo runs on its embedded defaults (embedded Kafka, throwaway
// PostgreSQL), and its last line and exit code report the check.
using System;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text.RegularExpressions;
using Expecto;
using Expecto.CSharp;

namespace KFlowHostingTests;

internal static class DemoTests
{
    private static string DemoDll()
    {
        // tests/KFlow.Hosting.Tests/bin/<Configuration>/net10.0/ → src-csharp/KFlow.Demo/bin/<Configuration>/net10.0/
        var dir = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        var configuration = dir.Parent!.Name;
        var root = dir.Parent.Parent!.Parent!.Parent!.Parent!.FullName;
        return Path.Combine(root, "src-csharp", "KFlow.Demo", "bin", configuration, "net10.0", "KFlow.Demo.dll");
    }

    private static (int Code, string[] Lines, string Errors) RunDemo(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(DemoDll());
        foreach (var a in args) psi.ArgumentList.Add(a);
        // The embedded defaults: no configured services from the environment.
        foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("KFlow__", StringComparison.OrdinalIgnoreCase) || k == "KFLOW_TEST_PG").ToList())
            psi.Environment.Remove(key);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            p.Kill(true);
            throw new Expecto.AssertException("the demo did not finish within 3 minutes:\n" + stdout);
        }

        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return (p.ExitCode, lines, stderr.Result);
    }

    public static readonly Test Tests = Runner.TestSequenced(Runner.TestList("Demo", new[]
    {
        Runner.TestCase("on embedded defaults the demo loses nothing, commits the end offsets and says so on its last line", () =>
        {
            var (code, lines, errors) = RunDemo("--events", "3000", "--keys", "30");
            var last = lines.LastOrDefault() ?? "";
            Expect.AreEqual(last, "events=3000 keys=30 rows=30 committed_at_end=true lost=0", "the last line:\n" + string.Join("\n", lines) + "\n" + errors);
            Expect.AreEqual(code, 0, "the exit code");
            Expect.IsTrue(lines.Any(l => Regex.IsMatch(l, @"consumed=\d+ committed=\d+ rows=\d+ rate=\d+/s lag=\d+")),
                "plain progress lines are printed when stdout is not a terminal");
        }),
        Runner.TestCase("a bad --events is refused with exit code 2", () =>
        {
            var (code, _, errors) = RunDemo("--events", "many");
            Expect.AreEqual(code, 2, "the exit code");
            Expect.Contains(errors, "--events needs a number", "the error names the argument");
        }),
    }));
}

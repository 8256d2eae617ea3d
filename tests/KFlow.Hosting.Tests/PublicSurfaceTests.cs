// Guards the facade's public surface: no type of FSharp.Core or of our F# assemblies may appear in
// any public or protected signature of KFlow.Hosting (generic arguments, arrays, constraints
// included), so C# users never meet FSharpFunc, FSharpList, FSharpOption, unions or Async.
using System;
using System.Collections.Generic;
using System.Linq;
using System.Reflection;
using Expecto;
using Expecto.CSharp;
using KFlow.Hosting;

namespace KFlowHostingTests;

internal static class PublicSurfaceTests
{
    /// <summary>Assemblies that must not appear: FSharp.Core and the F# projects.</summary>
    private static readonly HashSet<string> Forbidden = new(StringComparer.Ordinal)
    {
        "FSharp.Core", "KFlow.Core", "KFlow.Kafka", "KFlow.Postgres", "KFlow.Testing",
    };

    /// <summary>Types allowed by full name although their assembly is forbidden, each with its reason. Empty.</summary>
    private static readonly HashSet<string> Allowed = new(StringComparer.Ordinal);

    private const BindingFlags Declared =
        BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;

    private static bool Visible(MethodBase m) => m.IsPublic || m.IsFamily || m.IsFamilyOrAssembly;

    private static bool Visible(FieldInfo f) => f.IsPublic || f.IsFamily || f.IsFamilyOrAssembly;

    private static bool IsAccessor(MethodInfo m) =>
        m.IsSpecialName && (m.Name.StartsWith("get_", StringComparison.Ordinal) || m.Name.StartsWith("set_", StringComparison.Ordinal)
                            || m.Name.StartsWith("add_", StringComparison.Ordinal) || m.Name.StartsWith("remove_", StringComparison.Ordinal));

    /// <summary>Every forbidden type reachable from the public or protected signatures of <paramref name="types"/>,
    /// as "where: type" lines.</summary>
    internal static List<string> Violations(IEnumerable<Type> types)
    {
        var found = new List<string>();

        void Check(Type? t, string where)
        {
            if (t is null) return;
            if (t.HasElementType)
            {
                Check(t.GetElementType(), where);
                return;
            }

            if (t.IsGenericParameter)
            {
                foreach (var c in t.GetGenericParameterConstraints()) Check(c, where + " (constraint)");
                return;
            }

            if (t.IsGenericType && !t.IsGenericTypeDefinition)
                foreach (var a in t.GetGenericArguments()) Check(a, where);
            var assembly = t.Assembly.GetName().Name ?? "";
            if (Forbidden.Contains(assembly) && !Allowed.Contains(t.FullName ?? t.Name))
                found.Add($"{where}: {t} (from {assembly})");
        }

        void CheckMethod(MethodBase m, string owner)
        {
            var where = $"{owner}.{m.Name}";
            if (m is MethodInfo mi)
            {
                Check(mi.ReturnType, where + " returns");
                foreach (var g in mi.GetGenericArguments()) Check(g, where);
            }

            foreach (var p in m.GetParameters()) Check(p.ParameterType, $"{where}({p.Name})");
        }

        foreach (var type in types)
        {
            var owner = type.FullName ?? type.Name;
            Check(type.BaseType, owner + " base type");
            foreach (var i in type.GetInterfaces()) Check(i, owner + " implements");
            foreach (var g in type.GetGenericArguments()) Check(g, owner);
            foreach (var c in type.GetConstructors(Declared).Where(Visible)) CheckMethod(c, owner);
            // Property and event accessors are checked through their property or event below.
            foreach (var m in type.GetMethods(Declared).Where(m => Visible(m) && !IsAccessor(m))) CheckMethod(m, owner);
            foreach (var f in type.GetFields(Declared).Where(Visible)) Check(f.FieldType, $"{owner}.{f.Name}");
            foreach (var p in type.GetProperties(Declared))
            {
                if ((p.GetMethod is { } get && Visible(get)) || (p.SetMethod is { } set && Visible(set)))
                    Check(p.PropertyType, $"{owner}.{p.Name}");
            }

            foreach (var e in type.GetEvents(Declared).Where(e => e.AddMethod is { } add && Visible(add)))
                Check(e.EventHandlerType, $"{owner}.{e.Name}");
        }

        return found;
    }

    /// <summary>The facade's public surface, one line per type and visible member, sorted.</summary>
    internal static string Surface(Assembly assembly)
    {
        var lines = new List<string>();
        foreach (var type in assembly.GetExportedTypes().OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            lines.Add($"{type.FullName} : {type.BaseType?.FullName ?? "-"}");
            var members = type.GetMembers(Declared).Where(m => m switch
            {
                MethodBase mb => Visible(mb),
                FieldInfo f => Visible(f),
                PropertyInfo p => (p.GetMethod is { } g && Visible(g)) || (p.SetMethod is { } s && Visible(s)),
                EventInfo e => e.AddMethod is { } a && Visible(a),
                Type nested => nested.IsNestedPublic || nested.IsNestedFamily,
                _ => false,
            });
            lines.AddRange(members.Select(m => $"  {m.MemberType} {m}").OrderBy(l => l, StringComparer.Ordinal));
        }

        return string.Join("\n", lines) + "\n";
    }

    private static string BaselineFile()
    {
        var dir = new System.IO.DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !System.IO.File.Exists(System.IO.Path.Combine(dir.FullName, "KFlow.Functional.sln"))) dir = dir.Parent;
        return System.IO.Path.Combine(dir?.FullName ?? ".", "tests", "KFlow.Hosting.Tests", "PublicApi.txt");
    }

    public static readonly Test Tests = Runner.TestList("PublicSurface", new[]
    {
        Runner.TestCase("the public surface is the one recorded in PublicApi.txt (dotnet fsi build.fsx public-api rewrites it)", () =>
        {
            var actual = Surface(typeof(Flow<>).Assembly);
            var file = BaselineFile();
            if (Environment.GetEnvironmentVariable("KFLOW_WRITE_PUBLIC_API") == "1")
                System.IO.File.WriteAllText(file, actual);
            var recorded = System.IO.File.Exists(file) ? System.IO.File.ReadAllText(file).Replace("\r\n", "\n") : "";
            var added = actual.Split('\n').Except(recorded.Split('\n')).ToList();
            var removed = recorded.Split('\n').Except(actual.Split('\n')).ToList();
            Expect.IsTrue(added.Count == 0 && removed.Count == 0,
                "The facade's public API changed; if intended, run `dotnet fsi build.fsx public-api` (it rewrites " +
                "tests/KFlow.Hosting.Tests/PublicApi.txt), review the diff and commit it.\n" +
                "added:\n" + string.Join("\n", added) + "\nremoved:\n" + string.Join("\n", removed));
        }),
        Runner.TestCase("no F# type appears in a public or protected signature of the facade", () =>
        {
            var exported = typeof(Flow<>).Assembly.GetExportedTypes();
            Expect.IsTrue(exported.Length >= 10, $"the facade exports its types (found {exported.Length})");
            var violations = Violations(exported);
            Expect.IsTrue(violations.Count == 0,
                "F# types in the facade's public surface:\n" + string.Join("\n", violations));
        }),
        Runner.TestCase("the check finds the F# types of a type that exposes them", () =>
        {
            // PipeCore is the F# C# face: its signatures hold KFlow.Pipe (ours) and Sunk, so the
            // walk must report them; otherwise the test above could not fail.
            var violations = Violations(new[] { typeof(KFlow.Kafka.PipeCore), typeof(KFlow.Kafka.WorkflowCore) });
            Expect.IsTrue(violations.Any(v => v.Contains("KFlow.Pipe", StringComparison.Ordinal)),
                "Pipe<,> is reported:\n" + string.Join("\n", violations));
            Expect.IsTrue(violations.Any(v => v.Contains("WorkflowHandle", StringComparison.Ordinal)),
                "WorkflowHandle is reported");
        }),
        Runner.TestCase("the check looks inside generic arguments and arrays", () =>
        {
            var violations = Violations(new[] { typeof(Exposing) });
            Expect.AreEqual(violations.Count, 2, "a List<FSharpOption<int>> property and an FSharpList<int>[] parameter are both found");
        }),
    });

    /// <summary>A type exposing F# types inside generic arguments and an array (for the check's own test).</summary>
    public sealed class Exposing
    {
        public List<Microsoft.FSharp.Core.FSharpOption<int>> Options { get; } = new();

        public void Take(Microsoft.FSharp.Collections.FSharpList<int>[] lists) => _ = lists;
    }
}
